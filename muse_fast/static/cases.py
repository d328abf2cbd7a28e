"""The papers' sizes: one entry per op and size, each a function that runs the op forward (and
backward where it has one) on ``meta`` tensors, plus the op's useful work for the floor.

``work`` maps a kernel-name fragment to the logical work of that kernel at this size:
``mma`` FLOPs of its dots (the anchor for loop iterations and the tensor-core floor), ``ffma``
FLOPs it computes on CUDA cores where no dot exists, ``exp`` exponentials. Sizes follow the
papers: MusicFM / BEST-RQ (4096 clips x 30 s at 24 kHz, 750 frames of 512 after stacking),
Myna (batch 4096, 128 x 96 mel, 16 x 16 patches, 90 % masked), MuseLQ-style encoders
(64 x 750 x 1024 bf16).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

META = torch.device("meta")
BF16 = torch.bfloat16


@dataclass
class Case:
    op: str
    size: str
    prepare: Callable[[], Callable[[], object]]  # builds meta inputs, returns the step
    work: dict[str, object] = field(default_factory=dict)  # fragment -> work or f(constexprs)
    dtype: str = "float32"  # input precision, for the tensor-core floor
    note: str = ""
    autocast: torch.dtype | None = None  # run the step as under torch.autocast(dtype)
    # fraction of a kernel argument of this many elements the kernels read (masked inputs)
    touched: dict[int, float] = field(default_factory=dict)


Step = Callable[[], object]


def _mel() -> Step:
    from muse_fast.ops import mel_spectrogram

    wave = torch.empty(4096, 30 * 24000, device=META)
    return lambda: mel_spectrogram(wave, "musicfm")


_MEL_FRAMES = 4096 * 3001  # center=True: 1 + 720000 // 240


def _mel_band_flops(constexprs: dict) -> dict[str, float]:
    """FLOPs of the filterbank dot as the kernel walks it: per tile of BM mels, the bins from
    the tile's lowest band start to its highest band end, in steps of BK (HTK, 128 mels)."""
    bm, bk = int(constexprs.get("BM", 16)), int(constexprs.get("BK", 32))
    try:
        import torchaudio

        fb = torchaudio.functional.melscale_fbanks(1025, 0.0, 12000.0, 128, 24000, None, "htk")
        nz = fb != 0  # (1025, 128)
        k_total = 0
        for m0 in range(0, 128, bm):
            rows = nz[:, m0 : m0 + bm].any(1).nonzero()
            if len(rows):
                span = int(rows[-1]) + 1 - int(rows[0]) // bk * bk
                k_total += -(-span // bk) * bk
    except ImportError:  # no torchaudio: the dense product
        k_total = 1025 * 128 // bm
    flops = 2.0 * _MEL_FRAMES * k_total * bm
    return {"mma": flops, "ffma": flops}


def _mel_work() -> dict[str, object]:
    return {"_power_mel": _mel_band_flops}


def _quantize() -> Step:
    from muse_fast.ops import random_projection_quantize

    x = torch.empty(4096 * 750, 512, device=META)  # (N, d) stacked mel frames
    proj, codes = torch.empty(512, 16, device=META), torch.empty(8192, 16, device=META)
    return lambda: random_projection_quantize(x, proj, codes)


_N = 3_072_000
_RPQ_LOOPS = [2.0 * _N * 512 * 16, 2.0 * _N * 8192 * 16]  # projection, then the code tiles


def _nt_xent(batch: int) -> Callable[[], Step]:
    def prepare() -> Step:
        from muse_fast.ops import nt_xent

        z1 = torch.empty(batch, 128, device=META, dtype=BF16, requires_grad=True)
        z2 = torch.empty(batch, 128, device=META, dtype=BF16, requires_grad=True)
        return lambda: nt_xent(z1, z2, 0.1).backward()

    return prepare


def _nt_xent_work(batch: int) -> dict[str, dict[str, float]]:
    n = 2 * batch
    sim = 2.0 * n * n * 128
    return {"_fwd": {"mma": sim, "exp": n * n}, "_bwd": {"mma": 2 * sim, "exp": n * n}}


_MYNA_BATCH, _MYNA_KEEP, _MYNA_DIM = 4096, 5, 384  # 48 patches of 16 x 16 on 128 x 96, 10 % kept
_MYNA_TOUCHED = {_MYNA_BATCH * 128 * 96: _MYNA_KEEP / 48}  # the kernels read the kept patches


def _patch_embed(autocast: bool) -> Callable[[], Step]:
    def prepare() -> Step:
        from muse_fast.ops import masked_patch_embed

        dt = torch.float32 if autocast else BF16
        spec = torch.empty(_MYNA_BATCH, 128, 96, device=META, dtype=dt)
        keep = torch.empty(_MYNA_BATCH, _MYNA_KEEP, device=META, dtype=torch.long)
        w = torch.empty(_MYNA_DIM, 256, device=META, dtype=BF16, requires_grad=True)
        b = torch.empty(_MYNA_DIM, device=META, dtype=BF16, requires_grad=True)
        pos = torch.empty(48, _MYNA_DIM, device=META, dtype=BF16, requires_grad=True)

        def step() -> None:
            # autocast: an fp32 spectrogram meets bf16 weights with the walk answering
            # torch.is_autocast_enabled / get_autocast_dtype as autocast("cuda", bf16) would
            out = masked_patch_embed(spec, keep, 16, w, b, pos, norm_eps=1e-6)
            out.backward(torch.empty_like(out))

        return step

    return prepare


def _patch_embed_work() -> dict[str, dict[str, float]]:
    return {"_patch_embed": {"mma": 2.0 * _MYNA_BATCH * _MYNA_KEEP * 256 * _MYNA_DIM}}


def _gather_backward(unique: bool) -> Callable[[], Step]:
    def prepare() -> Step:
        from muse_fast.ops import gather_tokens

        x = torch.empty(64, 750, 1024, device=META, dtype=BF16, requires_grad=True)
        keep = torch.empty(64, 75, device=META, dtype=torch.long)
        kw = {"unique_indices": True} if unique else {}
        out = gather_tokens(x, keep, **kw)  # the forward is not what this case measures
        dy = torch.empty_like(out)
        return lambda: torch.autograd.grad(out, x, dy, retain_graph=True)

    return prepare


def _summary_mixing() -> Step:
    from muse_fast.nn import SummaryMixing

    with torch.device(META):
        m = SummaryMixing(1024).to(BF16)  # hidden widths 512 (the defaults)
    x = torch.empty(64, 750, 1024, device=META, dtype=BF16, requires_grad=True)
    mask = torch.ones(64, 750, device=META, dtype=torch.bool)
    dy = torch.empty(64, 750, 1024, device=META, dtype=BF16)
    return lambda: m(x, mask).backward(dy)


def _span_mask() -> Step:
    from muse_fast.ops import span_mask

    return lambda: span_mask(4096, 750, 10, 0.01, seed=0, device=META)


def _token_mask() -> Step:
    from muse_fast.ops import random_token_mask

    def step() -> None:
        random_token_mask(4096, 48, 0.9, seed=0, device=META)  # Myna patches
        random_token_mask(64, 750, 0.9, seed=0, device=META)  # frame tokens

    return step


def cases() -> list[Case]:
    return [
        Case("mel_spectrogram", "4096 x 30 s @ 24 kHz musicfm", _mel, _mel_work()),
        Case(
            "random_projection_quantize",
            "N 3.07 M, d 512, 8192 x 16 codes, fp32",
            _quantize,
            {"_rpq": {"mma": 2.0 * _N * 16 * (512 + 8192), "mma_loops": _RPQ_LOOPS}},
        ),
        Case(
            "nt_xent", "fwd+bwd B 4096, D 128 bf16", _nt_xent(4096), _nt_xent_work(4096), "bfloat16"
        ),
        Case(
            "nt_xent",
            "fwd+bwd B 32768, D 128 bf16",
            _nt_xent(32768),
            _nt_xent_work(32768),
            "bfloat16",
        ),
        Case(
            "masked_patch_embed",
            "Myna 4096 x 128 x 96 bf16, 16x16, 90 % masked, fwd+bwd",
            _patch_embed(False),
            _patch_embed_work(),
            "bfloat16",
            touched=_MYNA_TOUCHED,
        ),
        Case(
            "masked_patch_embed",
            "same, fp32 input under autocast (cast included)",
            _patch_embed(True),
            _patch_embed_work(),
            "bfloat16",
            autocast=BF16,
            touched=_MYNA_TOUCHED,
        ),
        Case(
            "gather_tokens",
            "backward 64·75 of 750 x 1024 bf16",
            _gather_backward(False),
            {},
            "bfloat16",
        ),
        Case(
            "gather_tokens",
            "backward 64·75 of 750 x 1024 bf16, unique indices",
            _gather_backward(True),
            {},
            "bfloat16",
        ),
        Case(
            "summary_mixing",
            "SummaryMixing (64, 750, 1024) bf16 fwd+bwd incl. GEMMs",
            _summary_mixing,
            {},
            "bfloat16",
        ),
        Case("span_mask", "4096 x 750 frames, span 10", _span_mask),
        Case("random_token_mask", "4096 x 48 and 64 x 750, 90 % masked", _token_mask),
    ]
