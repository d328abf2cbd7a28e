"""``RandomProjectionQuantizer``: the frozen BEST-RQ / MusicFM tokenizer (docs/design.md)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..ops._checks import FLOATING, check_int, check_tensor
from ..ops.quantize import random_projection_quantize

__all__ = ["RandomProjectionQuantizer"]

_BUFFERS = ("random_projection", "codebook", "mean", "std")


class RandomProjectionQuantizer(nn.Module):
    """Frozen random projection + codebook: frames (..., input_dim) → code indices.

    ``forward(x) = random_projection_quantize(normalize?(x), random_projection, codebook)``:
    the index of the code word nearest (in angle) to ``x A``, computed by the fused kernels
    without an N x codebook_size buffer.

    * ``random_projection`` A (input_dim, codebook_dim) is Xavier-normal and ``codebook``
      C (codebook_size, codebook_dim) standard normal, both drawn from the module's own
      ``torch.Generator().manual_seed(seed)`` — never the global RNG — projection first, then
      codebook (for ``num_codebooks = G > 1``: all G projections, then all G codebooks; the
      buffers get a leading G axis and the output a trailing one). With ``seed=142`` the buffers
      are bit-identical to MusicFM's ``RandomProjectionQuantizer`` (which seeds the global RNG
      with 142), and the buffer names match its state dict.
    * They are buffers: saved in ``state_dict``, moved by ``.to(device)``, never parameters,
      never trained. They stay float32 when the module is cast (``.half()``, ``.to(bfloat16)``):
      rounding the tokenizer would change the targets.
    * ``normalize_input``: inputs are first mapped to ``(x - mean) / std`` with dataset
      statistics held in the ``mean`` / ``std`` buffers (shape (input_dim,); MusicFM uses one
      global mean and std, broadcast here). Set them with :meth:`set_stats`, or estimate them
      with :meth:`fit_stats` / :meth:`estimate_stats`.
    * :meth:`stack_frames` (MusicFM's 4-frame stacking, from :mod:`muse_fast.ops.mel`) and
      :meth:`quantize_mel` (mel (B, F, T) → stacked frames → codes (B, T // factor)).

    The output is int64 and carries no gradient.

    >>> rpq = RandomProjectionQuantizer(512, codebook_size=8192, codebook_dim=16, seed=0)
    >>> tokens = rpq.quantize_mel(mel, factor=4)          # (B, 128, T) -> (B, T // 4)
    """

    def __init__(
        self,
        input_dim: int,
        codebook_size: int = 8192,
        codebook_dim: int = 16,
        num_codebooks: int = 1,
        seed: int = 0,
        normalize_input: bool = False,
    ) -> None:
        super().__init__()
        self.input_dim = check_int("input_dim", input_dim, min=1)
        self.codebook_size = check_int("codebook_size", codebook_size, min=1)
        self.codebook_dim = check_int("codebook_dim", codebook_dim, min=1)
        self.num_codebooks = check_int("num_codebooks", num_codebooks, min=1)
        self.seed = check_int("seed", seed, min=0)
        if not isinstance(normalize_input, bool):
            raise TypeError(
                f"normalize_input: expected a bool, got {type(normalize_input).__name__}"
            )
        self.normalize_input = normalize_input

        gen = torch.Generator().manual_seed(self.seed)
        g_count = self.num_codebooks
        proj = torch.empty(g_count, self.input_dim, self.codebook_dim)
        for g in range(g_count):
            nn.init.xavier_normal_(proj[g], generator=gen)
        codebook = torch.randn(g_count, self.codebook_size, self.codebook_dim, generator=gen)
        if g_count == 1:
            proj, codebook = proj[0], codebook[0]
        self.register_buffer("random_projection", proj.contiguous())
        self.register_buffer("codebook", codebook.contiguous())
        self.register_buffer("mean", torch.zeros(self.input_dim))
        self.register_buffer("std", torch.ones(self.input_dim))

    # -- dtype: the tokenizer stays float32 -----------------------------------------------------
    def _apply(self, fn, recurse=True):
        saved = {k: getattr(self, k) for k in _BUFFERS}
        super()._apply(fn, recurse)
        for k, old in saved.items():
            new = getattr(self, k)
            if new.dtype != torch.float32:  # a dtype cast: keep the float32 values, take the device
                setattr(self, k, old.to(device=new.device, dtype=torch.float32))
        return self

    # -- statistics -----------------------------------------------------------------------------
    @torch.no_grad()
    def set_stats(
        self, mean: float | torch.Tensor, std: float | torch.Tensor
    ) -> RandomProjectionQuantizer:
        """Store dataset statistics (scalars or (input_dim,)) and turn input normalization on."""
        m = torch.as_tensor(mean, dtype=torch.float64)
        s = torch.as_tensor(std, dtype=torch.float64)
        for name, t in (("mean", m), ("std", s)):
            if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, self.input_dim)):
                raise ValueError(
                    f"{name}: expected a scalar or shape ({self.input_dim},), got {tuple(t.shape)}"
                )
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name}: contains NaN or inf")
        if not bool((s > 0).all()):
            raise ValueError("std: expected values > 0")
        self.mean.copy_(m.expand(self.input_dim))
        self.std.copy_(s.expand(self.input_dim))
        self.normalize_input = True
        return self

    @staticmethod
    @torch.no_grad()
    def estimate_stats(
        data: torch.Tensor | Iterable[torch.Tensor], per_feature: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and (population) std of ``data`` — a tensor (..., input_dim) or an iterable of
        such batches — accumulated in float64. ``per_feature=False`` (MusicFM): one mean and std
        over every value, returned as 0-d tensors; ``True``: shape (input_dim,)."""
        batches = [data] if isinstance(data, torch.Tensor) else data
        count = 0
        total = total_sq = None
        for i, b in enumerate(batches):
            check_tensor(f"data[{i}]", b, min_ndim=1, dtypes=FLOATING)
            v = b.detach().reshape(-1, b.shape[-1]).to(torch.float64)
            s, sq = v.sum(0), (v * v).sum(0)
            if total is None:
                total, total_sq = s, sq
            elif s.shape != total.shape:
                raise ValueError(
                    f"data[{i}]: expected last dimension {total.shape[0]}, got {tuple(b.shape)}"
                )
            else:
                total, total_sq = total + s, total_sq + sq
            count += v.shape[0]
        if total is None or count == 0:
            raise ValueError("data: no values to estimate statistics from")
        if not per_feature:
            total, total_sq, count = total.sum(), total_sq.sum(), count * total.shape[0]
        mean = total / count
        var = (total_sq / count - mean * mean).clamp_min(0.0)
        return mean.float(), var.sqrt().float()

    def fit_stats(
        self, data: torch.Tensor | Iterable[torch.Tensor], per_feature: bool = False
    ) -> RandomProjectionQuantizer:
        """:meth:`estimate_stats` then :meth:`set_stats` (normalization on)."""
        return self.set_stats(*self.estimate_stats(data, per_feature=per_feature))

    # -- frames ---------------------------------------------------------------------------------
    @staticmethod
    def stack_frames(mel: torch.Tensor, factor: int = 4) -> torch.Tensor:
        """(B, F, T) → (B, F·factor, T // factor), frames t·k .. t·k+k-1 concatenated in order
        (:func:`muse_fast.ops.mel.stack_frames`)."""
        from ..ops.mel import stack_frames

        return stack_frames(mel, factor)

    def quantize_mel(self, mel: torch.Tensor, factor: int = 4) -> torch.Tensor:
        """Mel (B, F, T) with F·factor = input_dim → codes (B, T // factor) (or (..., G))."""
        frames = self.stack_frames(mel, factor).transpose(-1, -2)  # (B, T // k, F·k)
        return self(frames)

    # -- forward --------------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., input_dim) → int64 (...) (num_codebooks = 1) or (..., num_codebooks)."""
        check_tensor("x", x, min_ndim=1, dtypes=FLOATING)
        if x.shape[-1] != self.input_dim:
            raise ValueError(
                f"x: expected last dimension input_dim={self.input_dim}, got shape {tuple(x.shape)}"
            )
        if self.normalize_input:
            x = (x - self.mean) / self.std
        return random_projection_quantize(x, self.random_projection, self.codebook)

    def extra_repr(self) -> str:
        return (
            f"input_dim={self.input_dim}, codebook_size={self.codebook_size}, "
            f"codebook_dim={self.codebook_dim}, num_codebooks={self.num_codebooks}, "
            f"seed={self.seed}, normalize_input={self.normalize_input}"
        )
