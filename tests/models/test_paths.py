"""Execution paths of every model: fused vs eager references (same loss and gradients), the
Triton kernels under the interpreter, bf16 autocast, torch.compile, and a short training run."""

from __future__ import annotations

import copy

import pytest
import torch

import muse_fast
import muse_fast.models as M

from ._synth import batch_for

NAMES = M.list_models()


def _loss_and_grads(model, batch, seed):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = model.loss(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _compare(a, b, *, atol, rtol):
    """Same loss; same gradients, each tensor's scaled by its largest entry. The BEST-RQ conv
    front end gets 1e-2: its gradients sum products of the input mel (whose float32 rounding
    differs between the mel kernels and the reference, ~1e-4 dB) through training-mode
    BatchNorm, whose backward cancels large terms — the encoder's gradients after it match
    to ``atol``."""
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    torch.testing.assert_close(loss_a, loss_b, atol=atol, rtol=rtol)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        scale = grads_b[name].abs().max().clamp(min=1e-3)
        tol = 1e-2 if name.startswith("frontend.") else atol
        torch.testing.assert_close(
            grads_a[name] / scale,
            grads_b[name] / scale,
            atol=tol,
            rtol=rtol,
            msg=lambda m, name=name: f"{name}: {m}",
        )


@pytest.mark.parametrize("name", NAMES)
def test_fused_and_reference_paths_agree(name):
    torch.manual_seed(0)
    fused = M.create(name, size="tiny")
    eager = copy.deepcopy(fused)
    eager.config.use_fused = False
    batch = batch_for(fused, 3)
    forced: dict[str, set] = {"fused": set(), "eager": set()}
    for key, model in (("fused", fused), ("eager", eager)):
        # the backend the ops inside each forward are forced to
        enc = model.transformer if hasattr(model, "transformer") else model.encoder
        enc.register_forward_hook(lambda *_, k=key: forced[k].add(muse_fast.forced_backend()))
    got = _loss_and_grads(fused, batch, seed=7)
    want = _loss_and_grads(eager, batch, seed=7)
    assert forced == {"fused": {None}, "eager": {"reference"}}
    assert got[0].item() != 0.0
    _compare(got, want, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("name", ["myna-hybrid", "muselq-branchformer"])
def test_triton_kernels_match_the_reference_path(name):
    """Every op forced onto its Triton kernel (interpreter on CPU) vs the eager references."""
    overrides = {"mask_prob": 0.6} if name.startswith("muselq") else {}
    torch.manual_seed(0)
    model = M.create(name, size="tiny", **overrides)
    batch = batch_for(model, 2)
    with muse_fast.backend("triton"):
        got = _loss_and_grads(model, batch, seed=11)
    with muse_fast.backend("reference"):
        want = _loss_and_grads(model, batch, seed=11)
    _compare(got, want, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast(name):
    torch.manual_seed(0)
    model = M.create(name, size="tiny")
    batch = batch_for(model, 3)
    torch.manual_seed(3)
    ref = model.loss(batch).item()
    torch.manual_seed(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(batch)
        emb = model.embed(batch["audio"][:, 0] if model.n_views == 2 else batch["audio"])
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert abs(loss.item() - ref) <= 0.1 * abs(ref) + 0.05, (loss.item(), ref)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert torch.isfinite(emb).all()


def test_torch_compile_tiny_model():
    """The whole loss traces as one graph (custom ops with fake implementations, masks from
    device seeds) and gives the eager result. aot_eager keeps the test quick; inductor also
    compiles it (its RNG then draws different masks unless fallback_random is set)."""
    torch.manual_seed(0)
    model = M.create("muselq-branchformer", size="tiny", mask_prob=0.6)
    batch = batch_for(model, 2)
    compiled = torch.compile(model.loss, backend="aot_eager", fullgraph=True)
    torch.manual_seed(4)
    want = model.loss(batch)
    torch.manual_seed(4)
    got = compiled(batch)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    got.backward()
    assert model.token_head.weight.grad is not None


@pytest.mark.parametrize("name", NAMES)
def test_tiny_model_learns_on_synthetic_music(name):
    """Adam on one fixed batch of synthetic tones: the loss (mean of 3 steps) falls to 70 % of
    its start within 50 steps (the run stops as soon as it has)."""
    torch.manual_seed(0)
    overrides = {"mask_prob": 0.6} if name.startswith("muselq") else {}
    model = M.create(name, size="tiny", **overrides)
    batch = batch_for(model, 4 if model.n_views == 2 else 2, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(50):
        loss = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if len(losses) >= 6 and sum(losses[-3:]) < 0.7 * sum(losses[:3]):
            break
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3]), (name, losses)
