"""BEST-RQ random-projection quantizer (docs/design.md, "Quantizer"): frames → code indices, fused.

``random_projection_quantize(x, projection, codebook)`` maps each row of ``x`` (..., d) to

    argmin_i || C^_i - normalize(x A) ||_2,   C^_i = C_i / ||C_i||,

which equals ``argmax_i <C^_i, x A>`` (both sides unit-norm; the positive factor ``1/||x A||`` does
not move the arg-max). Code words must be non-zero (``C_i/||C_i||`` is undefined otherwise, and a
zero word would break that equivalence): the op rejects them, as it rejects non-finite weights.
These value checks need the data (a host sync on GPU), so they run once per version of the
projection / codebook tensors (in-place writes bump the version), together with the float32 copy
and the normalization of the codebook that the kernels use, cached for the next calls. Ties go to the lowest index (``torch.argmin``); a row with ``x A = 0``
returns 0. With a projection (G, d, h) and codebook (G, n, h) — ``num_codebooks = G`` — the
output gets a trailing axis of size G.

Backends: the Triton kernel (CUDA; ``kernels/quantize.py``) and the C++ kernel (CPU;
``csrc/quantize.cpp``) compute the arg-max form without ever writing the N x n score matrix; the
eager reference :func:`random_projection_quantize_reference` computes the literal distance form
in bounded chunks of rows and is the baseline of ``benchmarks/test_bench_quantize.py``. Kernels
compute in float32 (x may be float32, bfloat16 or float16; projection and codebook are used in
float32); float64 inputs run on the reference in float64. Indices of kernels and reference agree
except where two codes' scores are equal to within float32 rounding (the tests compare the
scores of the chosen codes there).

The output is an integer tensor: the op is not differentiable (like ``torch.argmin``) and has no
autograd formula; gradients never flow through it.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F

from .._backend import declare
from .._runtime import acc_dtype, empty
from ._checks import FLOATING, check_same_device, check_tensor

__all__ = ["random_projection_quantize", "random_projection_quantize_reference"]

# The reference scores at most this many (row, code) pairs at once: 2^24 fp32 = 64 MiB of
# distances, whatever N is.
REFERENCE_CHUNK_ELEMENTS = 1 << 24
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_NORM_EPS = 1e-12


def _as_groups(projection: torch.Tensor, codebook: torch.Tensor):
    if projection.dim() == 2:
        return projection.unsqueeze(0), codebook.unsqueeze(0), True
    return projection, codebook, False


def _out_shape(x: torch.Tensor, projection: torch.Tensor) -> tuple[int, ...]:
    lead = tuple(x.shape[:-1])
    return lead if projection.dim() == 2 else (*lead, projection.shape[0])


def random_projection_quantize_reference(
    x: torch.Tensor, projection: torch.Tensor, codebook: torch.Tensor
) -> torch.Tensor:
    """Eager definition: ``argmin_i || C_i/||C_i|| - normalize(x A) ||``, chunked over rows.

    x (..., d) floating; projection (d, h) or (G, d, h); codebook (n, h) or (G, n, h).
    Returns int64 (...) or (..., G). Computes in float32 (float64 if any input is float64):
    ``torch.cdist`` between the normalized projections and the normalized code words, then
    ``argmin`` (lowest index on ties). A row with ``x A = 0`` is equidistant from every code word
    and returns 0 (set explicitly: cdist's rounding would otherwise pick an arbitrary code). Code words must
    be non-zero (``C_i/||C_i||`` is undefined for a zero one; the public function rejects them,
    and only then is the distance form the arg-max form the kernels compute). At most ``REFERENCE_CHUNK_ELEMENTS``
    distances exist at a time, so memory is bounded whatever N is; this chunked eager code is
    the benchmark baseline. Not differentiable (integer output).
    """
    proj, cb, single = _as_groups(projection, codebook)
    n_groups, d, _ = proj.shape
    n_codes = cb.shape[1]
    ct = acc_dtype(x, projection, codebook)
    chat = F.normalize(cb.to(ct), dim=-1, eps=_NORM_EPS)
    x2 = x.reshape(-1, d)
    n_rows = x2.shape[0]
    out = torch.empty(n_rows, n_groups, dtype=torch.long, device=x.device)
    chunk = max(1, REFERENCE_CHUNK_ELEMENTS // n_codes)
    for g in range(n_groups):
        a = proj[g].to(ct)
        for s in range(0, n_rows, chunk):
            y = x2[s : s + chunk].to(ct) @ a  # (rows, h)
            norm = torch.linalg.vector_norm(y, dim=-1, keepdim=True)
            y_hat = y / norm.clamp_min(_NORM_EPS)
            dist = torch.cdist(y_hat, chat[g])  # (rows, n): bounded by the chunk
            idx = dist.argmin(dim=-1)
            out[s : s + chunk, g] = torch.where(norm[:, 0] == 0, torch.zeros_like(idx), idx)
    return (
        out[:, 0].reshape(_out_shape(x, projection))
        if single
        else out.reshape(_out_shape(x, projection))
    )


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------
def _key(t: torch.Tensor) -> tuple:
    # _version moves on every in-place write, so a cached copy is never stale for its key
    return (t.data_ptr(), t._version, tuple(t.shape), t.stride(), t.dtype, t.device)


# (projection key, codebook key) -> [projection, codebook, proj fp32, normalized codebook,
# validated]. The source tensors are held so their memory (hence the key) cannot be reused.
_PREPARED: OrderedDict[tuple, list] = OrderedDict()
_PREPARED_MAX = 8


def _prepare(
    projection: torch.Tensor, codebook: torch.Tensor, *, validate: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(projection (G, d, h) fp32 contiguous, normalized codebook (G, n, h) fp32), computed and
    (``validate``) checked once per version of the weights: no per-call host sync, no
    per-call re-normalization of the n x h codebook."""
    try:
        key = None if projection.device.type == "meta" else (_key(projection), _key(codebook))
    except RuntimeError:  # inference-mode tensors have no version counter: no caching
        key = None
    entry = _PREPARED.get(key) if key is not None else None
    if entry is None:
        proj, cb, _ = _as_groups(projection, codebook)
        # the same normalization as the reference, so both score against identical code words
        chat = F.normalize(cb.to(torch.float32), dim=-1, eps=_NORM_EPS).contiguous()
        entry = [projection, codebook, proj.to(torch.float32).contiguous(), chat, False]
        if key is not None:
            _PREPARED[key] = entry
            if len(_PREPARED) > _PREPARED_MAX:
                _PREPARED.popitem(last=False)
    elif key is not None:
        _PREPARED.move_to_end(key)
    if validate and not entry[4] and projection.device.type != "meta":  # meta: no values
        _check_values(projection, codebook)
        entry[4] = True
    return entry[2], entry[3]


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x (..., d) as (B, T, d) without copying where the leading dims allow it (the model's
    transposed frames (B, T, d) with stride 1 along T stay as they are)."""
    if x.dim() == 1:
        return x.view(1, 1, -1)
    try:
        return x.view(-1, x.shape[-2], x.shape[-1])  # (B, T, d)
    except RuntimeError:  # leading dims not mergeable: one copy
        return x.reshape(1, -1, x.shape[-1])


def _kernel_inputs(x: torch.Tensor, projection: torch.Tensor, codebook: torch.Tensor):
    """(x (B, T, d) view, projection (G, d, h) fp32, normalized codebook, out (N, G) int64)."""
    proj, chat = _prepare(projection, codebook)
    n_rows = math.prod(x.shape[:-1])
    out = empty(n_rows, proj.shape[0], dtype=torch.long, device=x.device)
    return _rows(x), proj, chat, out


def _finish(out: torch.Tensor, x: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    return out.reshape(_out_shape(x, projection))


def _kernel_check(x: torch.Tensor, projection: torch.Tensor, codebook: torch.Tensor) -> str | None:
    if acc_dtype(x, projection, codebook) == torch.float64:
        return "float64 inputs run on the reference (the kernels compute in float32)"
    if x.dtype not in _KERNEL_DTYPES:
        return f"x: dtype {str(x.dtype).replace('torch.', '')} is not float32/bfloat16/float16"
    if codebook.shape[-2] > 2**31 - 16:
        return "codebook: more than 2^31 - 16 codes (int32 indices inside the kernels)"
    return None


def _triton_check(x: torch.Tensor, projection: torch.Tensor, codebook: torch.Tensor) -> str | None:
    if projection.shape[-1] > 128:
        return f"codebook: code dimension h = {projection.shape[-1]} > 128 (one register tile)"
    return _kernel_check(x, projection, codebook)


def _rpq_triton(x: torch.Tensor, projection: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    from ..kernels import quantize as K

    x3, proj, chat, out = _kernel_inputs(x, projection, codebook)
    K.rpq_forward(x3, proj, chat, out)
    return _finish(out, x, projection)


def _rpq_cpu(x: torch.Tensor, projection: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    from .._ext import dtype_name, ext, ptr

    x3, proj, chat, out = _kernel_inputs(x, projection, codebook)
    x2 = x3.reshape(-1, x3.shape[-1])  # (N, d): the C++ kernel takes one row stride
    n_rows, d = x2.shape
    ext().rpq_forward(
        ptr(x2) if n_rows else 0,
        dtype_name(x2),
        n_rows,
        d,
        x2.stride(0),
        x2.stride(1),
        ptr(proj),
        ptr(chat),
        proj.shape[0],
        chat.shape[1],
        proj.shape[2],
        ptr(out) if n_rows else 0,
    )
    return _finish(out, x, projection)


def _example_inputs(device: torch.device) -> tuple[tuple, dict]:
    x = torch.randn(2, 50, 512, device=device)
    projection = torch.randn(512, 16, device=device) * (2.0 / 528) ** 0.5
    return (x, projection, torch.randn(8192, 16, device=device)), {}


def _fake(x: torch.Tensor, projection: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return x.new_empty(_out_shape(x, projection), dtype=torch.long)


def _check_values(projection: torch.Tensor, codebook: torch.Tensor) -> None:
    """Data-dependent checks on the d x h and n x h weights (one host sync on GPU). Run by
    :func:`_prepare` once per version of the weights, inside the custom op (so eagerly under
    torch.compile too), not on every call."""
    finite_p = torch.isfinite(projection).all()
    finite_c = torch.isfinite(codebook).all()
    norms = torch.linalg.vector_norm(codebook.double(), dim=-1)
    if bool(finite_p & finite_c & (norms > _NORM_EPS).all()):
        return
    if not bool(finite_p):
        raise ValueError("projection: contains NaN or inf")
    if not bool(finite_c):
        raise ValueError("codebook: contains NaN or inf")
    where = tuple(int(i) for i in (norms <= _NORM_EPS).nonzero()[0])
    raise ValueError(
        f"codebook: code word {where} has norm <= {_NORM_EPS}; C_i/||C_i|| is undefined "
        "(every code word must be non-zero)"
    )


_RPQ = declare(
    "random_projection_quantize",
    reference=random_projection_quantize_reference,
    triton=_rpq_triton,
    cpu=_rpq_cpu,
    checks={"triton": _triton_check, "cpu": _kernel_check},
    example_inputs=_example_inputs,
    fake=_fake,
    validate=lambda x, projection, codebook: _prepare(projection, codebook, validate=True),
)


def random_projection_quantize(
    x: torch.Tensor, projection: torch.Tensor, codebook: torch.Tensor
) -> torch.Tensor:
    """Code index of each row of ``x``, without materializing N x n scores.

    Args:
        x: (..., d) float32 / bfloat16 / float16 (float64 runs on the reference); any strides.
        projection: (d, h) or (G, d, h) — the random projection A (Xavier-normal in BEST-RQ).
        codebook: (n, h) or (G, n, h) — code words C (non-zero), normalized here.

    Returns:
        int64 (...) — or (..., G) for 3-D projection/codebook — with
        ``argmin_i ||C_i/||C_i|| - normalize(x A)||`` = ``argmax_i <C_i/||C_i||, x A>``,
        lowest index on ties, 0 for rows with ``x A = 0``. Rows containing NaN give an
        unspecified index (0 on the kernels). Not differentiable.

    >>> idx = random_projection_quantize(frames, proj, codebook)   # (B, T, 512) -> (B, T)
    """
    check_tensor("x", x, min_ndim=1, dtypes=FLOATING)
    check_tensor("projection", projection, ndim=(2, 3), dtypes=FLOATING)
    check_tensor("codebook", codebook, dtypes=FLOATING)
    if codebook.dim() != projection.dim():
        raise ValueError(
            f"codebook: expected {projection.dim()} dims like projection "
            f"{tuple(projection.shape)}, got shape {tuple(codebook.shape)}"
        )
    d = x.shape[-1]
    h = projection.shape[-1]
    if d < 1:
        raise ValueError(f"x: the last dimension (d) must be >= 1, got shape {tuple(x.shape)}")
    if projection.shape[-2] != d:
        raise ValueError(
            f"projection: expected shape {'(G, ' if projection.dim() == 3 else '('}d={d}, h) "
            f"to match x {tuple(x.shape)}, got {tuple(projection.shape)}"
        )
    if h < 1:
        raise ValueError(f"projection: the code dimension h must be >= 1, got {h}")
    if codebook.shape[-1] != h or codebook.shape[-2] < 1:
        raise ValueError(
            f"codebook: expected shape {'(G, ' if codebook.dim() == 3 else '('}n >= 1, h={h}), "
            f"got {tuple(codebook.shape)}"
        )
    if projection.dim() == 3:
        if projection.shape[0] < 1:
            raise ValueError(
                f"projection: expected G >= 1 codebooks, got {tuple(projection.shape)}"
            )
        if codebook.shape[0] != projection.shape[0]:
            raise ValueError(
                f"codebook: expected G={projection.shape[0]} codebooks like projection, "
                f"got shape {tuple(codebook.shape)}"
            )
    check_same_device(x=x, projection=projection, codebook=codebook)
    return _RPQ(x, projection, codebook)
