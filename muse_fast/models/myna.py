"""Myna (Yonay, Hammond & Yang 2025; ghost-signal/myna): a SimpleViT on log-mel spectrograms,
trained contrastively with 90 % token masking as the only augmentation.

Architecture (ghost-signal/myna ``vit.py``, itself lucidrains' SimpleViT):

* patch embedding ``LN(patch) → Linear → LN(dim)``, plus a fixed 2-D sin-cos positional
  embedding; no class token;
* pre-norm attention / MLP blocks (no biases in attention), a final LayerNorm, mean pooling;
* ``linear_head`` (dim → ``proj_dim``) on the pooled vector: the pre-training output (Myna's
  ``masked_model_output``). Downstream embeddings are the pooled vector, head removed (Myna's
  ``example.py`` sets ``linear_head = Identity``). The public repository does not record the
  head width used for pre-training; ``proj_dim`` defaults to 128.

Patches: ``base`` 16 × 16, ``vertical`` 128 × 2 (a whole mel column pair: pitch-sensitive), or
``hybrid`` — one transformer and one head, two patch embeddings; the training loss is the mean of
the two losses (each patch embedding runs the full two-view objective), the embedding the
concatenation of the two mean-pooled outputs (2 × dim).

Masking: :func:`muse_fast.ops.masked_patch_embed` embeds only the kept 10 % of patches (the
patch LayerNorm's affine is folded into the Linear), so the transformer never sees masked tokens.

Input: the ``myna`` mel preset (16 kHz, n_fft 2048, hop 512, 128 Slaney mels, log1p), 128 × 96
frames per view. With ``center=True`` a clip of ``s`` samples gives ``1 + s // 512`` frames, so
``segment_samples = 95 · 512 = 48640`` gives exactly 96 frames (Myna's 50 000-sample clips give 98
frames, which its code crops to a multiple of the patch width: 96 for 16 × 16 patches).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import lcm
from typing import Any

import torch
from torch import nn

from .. import nn as mnn
from .. import ops
from . import _common as C

__all__ = ["MYNA_SIZES", "Myna", "MynaConfig", "PatchEmbed"]

PATCHES: dict[str, tuple[tuple[int, int], ...]] = {
    "base": ((16, 16),),
    "vertical": ((128, 2),),
    "hybrid": ((16, 16), (128, 2)),
}

MYNA_SIZES: dict[str, dict[str, int]] = {
    # dim 384, depth 12, 6 heads, MLP 1536 — ≈ 22 M parameters (Myna's "vit-s-32")
    "vit-s": dict(dim=384, depth=12, heads=6, dim_head=64, mlp_dim=1536),
    # 768 / 12 / 12 / 3072 — ≈ 85 M parameters
    "vit-b": dict(dim=768, depth=12, heads=12, dim_head=64, mlp_dim=3072),
    "tiny": dict(dim=64, depth=2, heads=2, dim_head=32, mlp_dim=128),
}


@dataclass
class MynaConfig:
    """Myna hyper-parameters. ``size`` names the preset that set the transformer fields."""

    patch: str = "base"  # "base" (16×16) | "vertical" (128×2) | "hybrid" (both)
    size: str = "vit-s"
    dim: int = 384
    depth: int = 12
    heads: int = 6
    dim_head: int = 64
    mlp_dim: int = 1536
    proj_dim: int = 128  # linear_head width (contrastive output)
    n_mels: int = 128
    n_frames: int = 96  # mel frames per training view
    sample_rate: int = 16000
    segment_samples: int = 48640  # 1 + 48640 // 512 = 96 frames
    mask_ratio: float = 0.9
    loss: str = "nt_xent"  # "nt_xent" | "sogclr" (global contrastive, Myna's official code)
    temperature: float = 0.1
    sogclr_gamma: float = 0.9
    dataset_size: int | None = None  # required by "sogclr"
    use_fused: bool = True
    hop_length: int = 512  # mel geometry (``myna`` preset), passed to the model's mel
    n_fft: int = 2048
    log_mel: bool = True  # log1p of the mel (Myna's --log_mel); False: the power mel itself

    def __post_init__(self) -> None:
        if self.patch not in PATCHES:
            raise ValueError(f"patch: expected one of {list(PATCHES)}, got {self.patch!r}")
        if self.loss not in ("nt_xent", "sogclr"):
            raise ValueError(f"loss: expected 'nt_xent' or 'sogclr', got {self.loss!r}")
        if self.loss == "sogclr" and not self.dataset_size:
            raise ValueError("dataset_size: the 'sogclr' loss needs the number of training items")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio: expected a float in [0, 1), got {self.mask_ratio}")
        if self.dim % 4:
            raise ValueError(f"dim: the sin-cos embedding needs a multiple of 4, got {self.dim}")
        for ph, pw in PATCHES[self.patch]:
            if self.n_mels % ph or self.n_frames % pw:
                raise ValueError(
                    f"n_frames: a {self.n_mels} × {self.n_frames} mel does not split into "
                    f"{ph} × {pw} patches"
                )
        frames = 1 + self.segment_samples // self.hop_length
        if frames < self.n_frames:
            raise ValueError(
                f"segment_samples: {self.segment_samples} samples give {frames} mel frames, "
                f"fewer than n_frames={self.n_frames}"
            )

    @property
    def patch_sizes(self) -> tuple[tuple[int, int], ...]:
        return PATCHES[self.patch]


class PatchEmbed(nn.Module):
    """``LN(patch) → Linear → LN(dim)`` for one patch size, on kept patches only.

    Patches are taken row-major over the (n_mels / ph) × (frames / pw) grid, each flattened
    frequency-major (Myna's ``b c (h p1) (w p2) -> b (h w) (p1 p2 c)``).
    """

    def __init__(self, patch: tuple[int, int], dim: int, n_mels: int, n_frames: int) -> None:
        super().__init__()
        self.patch = tuple(patch)
        ph, pw = self.patch
        self.grid = (n_mels // ph, n_frames // pw)
        self.norm_in = nn.LayerNorm(ph * pw)
        self.proj = nn.Linear(ph * pw, dim)
        self.norm_out = nn.LayerNorm(dim)
        self.register_buffer("pos", C.posemb_sincos_2d(*self.grid, dim), persistent=False)

    def num_tokens(self, frames: int) -> int:
        return self.grid[0] * (frames // self.patch[1])

    def pos_for(self, frames: int) -> torch.Tensor:
        w = frames // self.patch[1]
        if w == self.grid[1]:
            return self.pos
        return C.posemb_sincos_2d(self.grid[0], w, self.pos.shape[1]).to(self.pos.device)

    def forward(self, spec: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
        """spec (B, n_mels, frames), keep_idx (B, n_keep) → tokens (B, n_keep, dim)."""
        # LN(patch) then Linear == normalize(patch) then Linear with the LN affine folded in.
        # (elementwise products and a sum: float32 under autocast, unlike a matmul)
        weight = self.proj.weight * self.norm_in.weight  # (D, P)
        bias = self.proj.bias + (self.proj.weight * self.norm_in.bias).sum(dim=1)  # (D,)
        x = ops.masked_patch_embed(
            spec, keep_idx, self.patch, weight, bias, norm_eps=self.norm_in.eps
        )
        x = self.norm_out(x)
        pos = self.pos_for(spec.shape[-1]).to(x.dtype)
        return x + pos[keep_idx]  # (B, n_keep, D): fixed embedding of the kept positions


class Myna(C.EncoderModel):
    """Myna encoder + contrastive objective. See the module docstring."""

    n_views = 2

    def __init__(self, config: MynaConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or MynaConfig()
        self.sample_rate = cfg.sample_rate
        self.segment_samples = cfg.segment_samples
        self.embeds = nn.ModuleList(
            PatchEmbed(p, cfg.dim, cfg.n_mels, cfg.n_frames) for p in cfg.patch_sizes
        )
        self.transformer = C.Transformer(cfg.dim, cfg.depth, cfg.heads, cfg.dim_head, cfg.mlp_dim)
        self.linear_head = nn.Linear(cfg.dim, cfg.proj_dim)
        self.mel = mnn.MelSpectrogram(
            "myna",
            n_mels=cfg.n_mels,
            hop_length=cfg.hop_length,
            n_fft=cfg.n_fft,
            **({} if cfg.log_mel else {"log": None}),
        )
        if cfg.loss == "nt_xent":
            self.criterion: nn.Module = mnn.NTXentLoss(temperature=cfg.temperature)
        else:
            self.criterion = mnn.GlobalContrastiveLoss(
                cfg.dataset_size, temperature=cfg.temperature, gamma=cfg.sogclr_gamma
            )
        # audio samples per embed_frames step (the time stride of the finest patch)
        self.frame_hop = self.mel.hop_length * min(pw for _, pw in cfg.patch_sizes)
        self.embed_dim = cfg.dim * len(cfg.patch_sizes)
        self._frame_multiple = lcm(*(pw for _, pw in cfg.patch_sizes))

    # ------------------------------------------------------------------ features
    def spectrogram(self, audio: torch.Tensor, frames: int | None = None) -> torch.Tensor:
        """(N, samples) → log-mel (N, n_mels, frames) in float32, cropped to ``frames`` (default:
        the largest multiple of every patch width)."""
        spec = super().spectrogram(audio)
        if frames is None:
            frames = spec.shape[-1] // self._frame_multiple * self._frame_multiple
        return spec[..., :frames].contiguous()

    def _min_samples(self) -> int:
        # one patch width of frames, and more than n_fft // 2 samples for the reflect padding
        return max(self.mel.hop_length * (self._frame_multiple - 1), self.mel.n_fft // 2 + 1)

    # ------------------------------------------------------------------ encoder
    def _encode(
        self, spec: torch.Tensor, which: int, *, mask: bool, layers: list[int] | None = None
    ) -> Any:
        embed = self.embeds[which]
        n, frames = spec.shape[0], spec.shape[-1]
        length = embed.num_tokens(frames)
        if mask:
            keep = ops.random_token_mask(n, length, self.config.mask_ratio, device=spec.device)
        else:
            keep = torch.arange(length, device=spec.device).expand(n, length)
        return self.transformer(embed(spec, keep), layers)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Two-view contrastive loss; ``batch["audio"]``: (B, 2, segment_samples)."""
        cfg = self.config
        views, b = C.two_view_batch(batch, cfg.segment_samples)  # (2B, S)
        index = batch.get("index") if isinstance(batch, dict) else None
        if cfg.loss == "sogclr" and index is None:
            raise ValueError("batch['index']: the 'sogclr' loss needs the items' dataset indices")
        with self._backend():
            spec = self.spectrogram(views, cfg.n_frames)  # (2B, n_mels, n_frames)
            losses = []
            for which in range(len(self.embeds)):
                # each view masked independently: one random mask per row of the 2B batch
                # (2B, D), bf16 under autocast: the loss kernels accumulate in fp32
                z = self.linear_head(self._encode(spec, which, mask=True).mean(dim=1))
                z1, z2 = z[:b], z[b:]
                if cfg.loss == "nt_xent":
                    losses.append(self.criterion(z1, z2))
                else:
                    losses.append(self.criterion(z1, z2, index.to(z.device)))
            loss = losses[0] if len(losses) == 1 else sum(losses) / len(losses)
            return loss.float()  # the scalar in fp32 (logged, compared across runs)

    forward = loss

    # ------------------------------------------------------------------ embeddings
    def _prepare(self, audio: torch.Tensor, sample_rate: int | None) -> torch.Tensor:
        C.check_sample_rate(sample_rate, self.sample_rate)
        C.check_audio("audio", audio, ndim=2, min_samples=self._min_samples())
        return self.spectrogram(audio)

    def embed(
        self, audio: torch.Tensor, layer: C.Layer = None, *, sample_rate: int | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        """Mean-pooled embedding (B, D) of unmasked audio (B, samples); hybrid: D = 2 · dim.

        ``layer``: None (output of the last block, after the final LayerNorm), an int block
        index, or ``"all"`` (a list over blocks). Any length ≥ one patch width of frames.
        """
        frames = self._frames(audio, layer, sample_rate)
        if isinstance(frames, list):
            return [f.mean(dim=1) for f in frames]
        return frames.mean(dim=1)

    def embed_chunks(self, audio: torch.Tensor, *, sample_rate: int | None = None) -> torch.Tensor:
        """Myna's ``example.py`` inference: the mel of each clip (B, samples) cut into whole
        chunks of ``n_frames`` frames, each encoded unmasked and mean-pooled (hybrid: the two
        patch embeddings' vectors concatenated, 16 × 16 first) → (B, n_chunks, D)."""
        cfg = self.config
        with self._backend():
            C.check_sample_rate(sample_rate, self.sample_rate)
            C.check_audio("audio", audio, ndim=2, min_samples=self._min_samples())
            spec = super().spectrogram(audio)  # (B, F, frames)
            b, f, frames = spec.shape
            n = frames // cfg.n_frames
            if n == 0:
                raise ValueError(
                    f"audio: {audio.shape[-1]} samples give {frames} mel frames, fewer than one "
                    f"chunk of n_frames={cfg.n_frames}"
                )
            chunks = spec[..., : n * cfg.n_frames].reshape(b, f, n, cfg.n_frames)
            chunks = chunks.permute(0, 2, 1, 3).reshape(b * n, f, cfg.n_frames)  # (B·n, F, 96)
            pooled = [
                self._encode(chunks, which, mask=False).mean(dim=1)
                for which in range(len(self.embeds))
            ]
            return torch.cat(pooled, dim=-1).view(b, n, -1)

    def embed_frames(
        self, audio: torch.Tensor, layer: C.Layer = None, *, sample_rate: int | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        """Token embeddings averaged over frequency: (B, T, D), one step per ``frame_hop``
        samples (the finest patch width; hybrid: 16×16 tokens repeated to the 128×2 rate)."""
        return self._frames(audio, layer, sample_rate)

    def _frames(self, audio, layer, sample_rate):
        layers, as_list = C.resolve_layers(layer, self.config.depth)
        with self._backend():
            spec = self._prepare(audio, sample_rate)
            n, frames = spec.shape[0], spec.shape[-1]
            per_embed = []
            for which, embed in enumerate(self.embeds):
                _, outs = self._encode(spec, which, mask=False, layers=layers)
                gh, gw = embed.grid[0], frames // embed.patch[1]
                # (B, gh·gw, D) → mean over frequency rows → (B, gw, D)
                outs = [o.view(n, gh, gw, -1).mean(dim=1) for o in outs]
                per_embed.append(outs)
            steps = frames * self.mel.hop_length // self.frame_hop
            result = []
            for k in range(len(layers)):
                parts = [p[k].repeat_interleave(steps // p[k].shape[1], dim=1) for p in per_embed]
                result.append(torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0])
        return result if as_list else result[0]


def myna_config(patch: str = "base", size: str = "vit-s", **overrides: Any) -> MynaConfig:
    if size not in MYNA_SIZES:
        raise ValueError(f"size: expected one of {list(MYNA_SIZES)} for Myna, got {size!r}")
    base = dict(patch=patch, size=size, **MYNA_SIZES[size])
    base.update(overrides)
    return MynaConfig(**base)
