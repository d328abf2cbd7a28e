"""NTXentLoss / GlobalContrastiveLoss across two CPU processes (gloo): negatives gathered from all
ranks with gradients, DDP-averaged parameter gradients equal to the single-process gradients of
the loss on the concatenated batch, and identical SogCLR state on every rank."""

from __future__ import annotations

import gc
import os
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from muse_fast.testing import seed_for

WORLD = 2
N_LOCAL, D_IN, D = 3, 6, 5
DATASET = 16


def _model(seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    m = torch.nn.Linear(D_IN, D, dtype=torch.float64)
    with torch.no_grad():
        m.weight.copy_(torch.randn(D, D_IN, generator=g, dtype=torch.float64))
        m.bias.copy_(torch.randn(D, generator=g, dtype=torch.float64))
    return m


def _data(seed: int, steps: int):
    g = torch.Generator().manual_seed(seed)
    n = WORLD * N_LOCAL
    x1 = torch.randn(steps, n, D_IN, generator=g, dtype=torch.float64)
    x2 = torch.randn(steps, n, D_IN, generator=g, dtype=torch.float64)
    index = torch.stack([torch.randperm(DATASET, generator=g)[:n] for _ in range(steps)])
    return x1, x2, index


def _single_process(seed: int, steps: int):
    """Loss values, parameter gradients and final log_u of one process on the global batch."""
    import muse_fast

    x1, x2, index = _data(seed, steps)
    out = {}
    m = _model(seed)
    loss = muse_fast.ops.nt_xent_reference(m(x1[0]), m(x2[0]), 0.2)
    z1 = m(x1[0]).detach().requires_grad_(True)
    (g_z1,) = torch.autograd.grad(muse_fast.ops.nt_xent_reference(z1, m(x2[0]).detach(), 0.2), z1)
    loss.backward()
    out["ntx"] = (loss.item(), [p.grad.clone() for p in m.parameters()], g_z1)
    m = _model(seed)
    gcl = muse_fast.nn.GlobalContrastiveLoss(DATASET, temperature=0.2, gather_distributed=False)
    losses, grads = [], []
    for s in range(steps):
        m.zero_grad()
        loss = gcl(m(x1[s]), m(x2[s]), index[s])
        loss.backward()
        losses.append(loss.item())
        grads.append([p.grad.clone() for p in m.parameters()])
    out["gcl"] = (losses, grads, gcl.log_u.clone())
    return out


def _worker(rank: int, init_file: str, seed: int, steps: int, backends, errors) -> None:
    try:
        os.environ.pop("MUSE_FAST_BACKEND", None)
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                world_size=WORLD)  # fmt: skip
        expect = _single_process(seed, steps)
        for backend in backends:
            _check_backend(rank, seed, steps, backend, expect)
        # DDP reducers (kept alive by reference cycles) must release the gloo group before it
        # is destroyed: a reducer collected at interpreter exit aborted the process once in 35.
        gc.collect()
        dist.barrier()
    except BaseException:
        errors.put(f"rank {rank}: {traceback.format_exc()}")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _check_backend(rank: int, seed: int, steps: int, backend: str, expect) -> None:
    import muse_fast

    x1, x2, index = _data(seed, steps)
    sl = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
    close = dict(rtol=1e-9, atol=1e-12)
    with muse_fast.backend(backend):
        # NT-Xent under DDP
        model = torch.nn.parallel.DistributedDataParallel(_model(seed))
        z1 = model(x1[0, sl])
        z1.retain_grad()
        loss = muse_fast.nn.NTXentLoss(temperature=0.2)(z1, model(x2[0, sl]))
        loss.backward()
        e_loss, e_grads, e_gz1 = expect["ntx"]
        torch.testing.assert_close(loss.item(), e_loss, **close)  # same value on every rank
        for p, e in zip(model.parameters(), e_grads):
            torch.testing.assert_close(p.grad, e, **close)  # DDP average = single process
        # local embeddings get WORLD x their single-process gradient (DDP divides by WORLD);
        # here z2's contribution flows through the model, so compare z1 on its own:
        z1b = model.module(x1[0, sl]).detach().requires_grad_(True)
        loss_b = muse_fast.nn.NTXentLoss(temperature=0.2)(z1b, model.module(x2[0, sl]).detach())
        (g,) = torch.autograd.grad(loss_b, z1b)
        torch.testing.assert_close(g, WORLD * e_gz1[sl], **close)

        # SogCLR under DDP, several steps (u state shared through the gathered indices)
        model = torch.nn.parallel.DistributedDataParallel(_model(seed))
        gcl = muse_fast.nn.GlobalContrastiveLoss(DATASET, temperature=0.2)
        e_losses, e_grads, e_log_u = expect["gcl"]
        for s in range(steps):
            model.zero_grad()
            loss = gcl(model(x1[s, sl]), model(x2[s, sl]), index[s, sl])
            loss.backward()
            torch.testing.assert_close(loss.item(), e_losses[s], **close)
            for p, e in zip(model.parameters(), e_grads[s]):
                torch.testing.assert_close(p.grad, e, **close)
        torch.testing.assert_close(gcl.log_u, e_log_u, **close)


def test_two_ranks_match_single_process(tmp_path, request):
    """One spawn (two processes start in ~10 s on a loaded 2-core machine) checks both the C++
    kernels and the eager path. Data and weights follow the session seed (both ranks and the
    single-process expectation draw them from the same generator seed)."""
    seed = seed_for(request.node.nodeid)
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    init_file = str(tmp_path / "pg_init")
    try:
        mp.spawn(
            _worker,
            args=(init_file, seed, 3, ("cpu", "reference"), errors),
            nprocs=WORLD,
            join=True,
        )
    except Exception as e:
        msgs = []
        while not errors.empty():
            msgs.append(errors.get())
        pytest.fail(f"seed {seed}: " + ("\n".join(msgs) or str(e)))
