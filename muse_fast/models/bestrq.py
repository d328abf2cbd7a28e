"""BEST-RQ music foundation models: MusicFM (Won, Hung & Le, ICASSP 2024; minzwon/musicfm) with
a Conformer encoder, and MuseLQ (Vavaroutsos, Palamas & Vikatos, SAC 2026; Orfium/muse-lq) with
a Branchformer encoder whose mixer is attention or SummaryMixing. One pipeline serves both:

1. **Targets** (no gradient): the ``musicfm`` log-mel (24 kHz, n_fft 2048, hop 240, 128 HTK
   mels, dB) of the clean audio, its last frame dropped (MusicFM's ``[..., :-1]``), normalized
   by the dataset mean / std (scalar buffers ``mel_mean``, ``mel_std``; defaults are MusicFM's FMA
   statistics, :meth:`BestRQ.estimate_stats` replaces them), 4 frames stacked → 512-d at 25 Hz,
   quantized by a frozen :class:`~muse_fast.nn.RandomProjectionQuantizer` (8192 × 16).
2. **Masking**: the waveform is cut into 400 ms spans (9 600 samples = 10 tokens), each masked
   with probability ``mask_prob`` (MusicFM 0.6, MuseLQ 0.2) — :func:`~muse_fast.ops.span_mask`
   drawn once at sample level and once at token level from the same seed, so both name the same
   spans; masked samples are replaced by N(0, 0.1²) noise (:func:`~muse_fast.ops.apply_span_mask`).
   ``mask_replacement="embedding"`` instead leaves the audio clean and replaces the masked
   front-end frames with a learned mask embedding.
3. **Encoder**: the normalized log-mel of the masked audio → two residual 2-D conv blocks of
   stride 2 (frequency and time) → Linear to ``dim`` (MusicFM's ``Conv2dSubsampling``, 100 Hz →
   25 Hz) → ``depth`` Conformer or Branchformer blocks (rotary MHSA or SummaryMixing) → LayerNorm.
4. **Loss**: cross-entropy between ``Linear(dim → codebook_size)`` logits and the targets at the
   masked tokens; MuseLQ adds the MSE between ``Linear(dim → 512)`` and the normalized stacked mel
   at the masked tokens (``mel_loss_weight``).

Sizes follow the MuseLQ paper's Table 2, whose parameter counts they reproduce: MusicFM keeps the
wav2vec2-conformer widths (FFN 4096, 16 heads) at every ``dim``; ``small`` = 4 × 768
(Conformer ≈ 95 M), ``large`` = 12 × 1024 (Conformer ≈ 330 M, Branchformer ≈ 187 M with a
4096-wide cgMLP).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import nn as mnn
from .. import ops
from . import _common as C

__all__ = ["BESTRQ_SIZES", "BestRQ", "BestRQConfig", "Conv2dSubsampling", "Res2d"]

BESTRQ_SIZES: dict[str, dict[str, Any]] = {
    "small": dict(dim=768, depth=4, heads=16, ffn_dim=4096, cgmlp_dim=4096, conv_dim=512),
    "large": dict(dim=1024, depth=12, heads=16, ffn_dim=4096, cgmlp_dim=4096, conv_dim=512),
    # MusicFM25Hz as published (minzwon/musicfm): HF Wav2Vec2Conformer blocks (rotary on the
    # attention input, BatchNorm and bias-free convs in the conv module), 4096 codes
    "musicfm": dict(
        dim=1024,
        depth=12,
        heads=16,
        ffn_dim=4096,
        cgmlp_dim=4096,
        conv_dim=512,
        codebook_size=4096,
        rotary="input",
        conv_norm="batch",
        conv_bias=False,
    ),
    # CPU tests / demos: a 1024-word codebook keeps the output layer from dominating
    "tiny": dict(
        dim=64,
        depth=2,
        heads=4,
        ffn_dim=128,
        cgmlp_dim=128,
        conv_dim=16,
        dropout=0.0,
        segment_samples=48000,
        codebook_size=1024,
    ),
}
_SIZE_ALIASES = {"base": "small"}

HOP = 240  # default hop of the ``musicfm`` mel (100 Hz at 24 kHz); the model reads its config's
STACK = 4  # frames per token (25 Hz)


@dataclass
class BestRQConfig:
    encoder: str = "conformer"  # "conformer" | "branchformer"
    mixer: str = "attention"  # "attention" | "summary_mixing"
    size: str = "large"
    dim: int = 1024
    depth: int = 12
    heads: int = 16
    ffn_dim: int = 4096  # Conformer feed-forward width
    cgmlp_dim: int = 4096  # Branchformer cgMLP width
    kernel_size: int = 31
    conv_dim: int = 512  # front-end channels
    dropout: float = 0.1
    n_mels: int = 128
    sample_rate: int = 24000
    segment_samples: int = 720000  # 30 s
    codebook_size: int = 8192
    codebook_dim: int = 16
    quantizer_seed: int = 142  # MusicFM's
    mask_span_s: float = 0.4
    mask_prob: float = 0.6
    mask_noise_std: float = 0.1
    mask_replacement: str = "noise"  # "noise" (on the waveform) | "embedding" (learned)
    mel_loss_weight: float = 0.0  # MuseLQ: 1.0 (CE + MSE)
    mel_mean: float = 6.768444971712967  # MusicFM fma_stats.json
    mel_std: float = 18.417922652295623
    use_fused: bool = True
    rotary: str = "qk"  # attention positions: "qk" (after the projections) | "input" (HF) | "none"
    conv_norm: str = "layer"  # Conformer conv module norm: "layer" | "batch" (HF / MusicFM)
    conv_bias: bool = True  # Conformer conv module biases (HF / MusicFM: False)
    hop_length: int = HOP  # mel geometry (``musicfm`` preset), passed to the model's mel
    n_fft: int = 2048

    def __post_init__(self) -> None:
        if self.encoder not in ("conformer", "branchformer"):
            raise ValueError(
                f"encoder: expected 'conformer' or 'branchformer', got {self.encoder!r}"
            )
        if self.mixer not in ("attention", "summary_mixing"):
            raise ValueError(f"mixer: expected 'attention' or 'summary_mixing', got {self.mixer!r}")
        if self.mask_replacement not in ("noise", "embedding"):
            raise ValueError(
                f"mask_replacement: expected 'noise' or 'embedding', got {self.mask_replacement!r}"
            )
        if not 0.0 <= self.mask_prob <= 1.0:
            raise ValueError(f"mask_prob: expected a float in [0, 1], got {self.mask_prob}")
        if self.rotary not in ("qk", "input", "none"):
            raise ValueError(f"rotary: expected 'qk', 'input' or 'none', got {self.rotary!r}")
        if self.conv_norm not in ("layer", "batch"):
            raise ValueError(f"conv_norm: expected 'layer' or 'batch', got {self.conv_norm!r}")
        token = self.token_samples
        if self.segment_samples % token:
            raise ValueError(
                f"segment_samples: expected a multiple of {token} samples (one 25 Hz token), "
                f"got {self.segment_samples}"
            )
        if self.span_samples % token or self.span_samples <= 0:
            raise ValueError(
                f"mask_span_s: a span must be a positive whole number of tokens "
                f"({token} samples each), got {self.mask_span_s} s = {self.span_samples} samples"
            )
        if self.n_mels % 4:
            raise ValueError(f"n_mels: the front end halves it twice, got {self.n_mels}")

    @property
    def token_samples(self) -> int:
        """Audio samples per 25 Hz token: ``hop_length · 4``."""
        return self.hop_length * STACK

    @property
    def span_samples(self) -> int:
        return round(self.sample_rate * self.mask_span_s)

    @property
    def span_tokens(self) -> int:
        return self.span_samples // self.token_samples


class Res2d(nn.Module):
    """Residual block: conv3×3(stride) → BN → ReLU → conv3×3 → BN, plus a strided conv3×3 → BN
    shortcut; ReLU after the sum (MusicFM's ``Res2dModule``)."""

    def __init__(self, cin: int, cout: int, stride: tuple[int, int] = (2, 2)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, stride=stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if cin != cout or max(stride) > 1:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, stride=stride), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        skip = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + skip)


class Conv2dSubsampling(nn.Module):
    """(B, n_mels, T) → (B, ceil(ceil(T/2)/2), dim): two :class:`Res2d` of stride 2 → Linear."""

    def __init__(self, n_mels: int, channels: int, dim: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(Res2d(1, channels), Res2d(channels, channels))
        self.linear = nn.Linear(channels * (n_mels // 4), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x.unsqueeze(1))  # (B, C, F/4, T/4)
        b, c, f, t = x.shape
        x = x.permute(0, 3, 1, 2).reshape(b, t, c * f)  # b c f t -> b t (c f)
        return self.linear(x)


class Encoder(nn.Module):
    """Conformer or Branchformer blocks + a final LayerNorm."""

    def __init__(self, cfg: BestRQConfig) -> None:
        super().__init__()
        mixer_kw = {"rotary": cfg.rotary} if cfg.mixer == "attention" else {}
        if cfg.encoder == "conformer":
            make = lambda: mnn.ConformerBlock(  # noqa: E731
                cfg.dim,
                cfg.heads,
                cfg.ffn_dim,
                kernel_size=cfg.kernel_size,
                dropout=cfg.dropout,
                mixer=cfg.mixer,
                conv_norm=cfg.conv_norm,
                conv_bias=cfg.conv_bias,
                **mixer_kw,
            )
        else:
            make = lambda: mnn.BranchformerBlock(  # noqa: E731
                cfg.dim,
                cfg.heads,
                cgmlp_dim=cfg.cgmlp_dim,
                kernel_size=cfg.kernel_size,
                dropout=cfg.dropout,
                mixer=cfg.mixer,
                **mixer_kw,
            )
        self.layers = nn.ModuleList(make() for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, x: torch.Tensor, layers: list[int] | None = None) -> Any:
        return C.run_blocks(self.layers, self.norm, x, layers)


class BestRQ(C.EncoderModel):
    """BEST-RQ pre-training with a Conformer (MusicFM) or Branchformer (MuseLQ) encoder."""

    n_views = 1

    def __init__(self, config: BestRQConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or BestRQConfig()
        self.sample_rate = cfg.sample_rate
        self.segment_samples = cfg.segment_samples
        self.frame_hop = cfg.token_samples  # 960 samples: 25 Hz tokens
        self.embed_dim = cfg.dim
        self.mel = mnn.MelSpectrogram(
            "musicfm", n_mels=cfg.n_mels, hop_length=cfg.hop_length, n_fft=cfg.n_fft
        )
        # waveform span masking (no parameters); the token-level mask is drawn from its seed
        self.span_masker = mnn.SpanMasker(
            cfg.span_samples, cfg.mask_prob, noise_std=cfg.mask_noise_std
        )
        self.register_buffer("mel_mean", torch.tensor(float(cfg.mel_mean)))
        self.register_buffer("mel_std", torch.tensor(float(cfg.mel_std)))
        self.quantizer = mnn.RandomProjectionQuantizer(
            cfg.n_mels * STACK, cfg.codebook_size, cfg.codebook_dim, seed=cfg.quantizer_seed
        )
        self.frontend = Conv2dSubsampling(cfg.n_mels, cfg.conv_dim, cfg.dim)
        self.mask_embedding = (
            nn.Parameter(torch.randn(cfg.dim) * 0.02)
            if cfg.mask_replacement == "embedding"
            else None
        )
        self.encoder = Encoder(cfg)
        self.token_head = nn.Linear(cfg.dim, cfg.codebook_size)
        self.mel_head = nn.Linear(cfg.dim, cfg.n_mels * STACK) if cfg.mel_loss_weight else None

    # ------------------------------------------------------------------ features
    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, samples) → dB mel (B, n_mels, samples // hop), float32, last frame dropped."""
        return self.spectrogram(audio)[..., :-1]

    def normalized_mel(self, audio: torch.Tensor) -> torch.Tensor:
        return (self.log_mel(audio) - self.mel_mean) / self.mel_std

    @torch.no_grad()
    def estimate_stats(self, audio: torch.Tensor | Any, max_batches: int | None = None) -> None:
        """Set ``mel_mean`` / ``mel_std`` to the statistics of the dB mel of ``audio``: a tensor
        (B, samples) or an iterable of such tensors (or of batches with key ``"audio"``)."""
        batches = [audio] if isinstance(audio, torch.Tensor) else audio
        total = total_sq = count = 0.0
        for i, item in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            x = C.get_audio(item, name="audio")
            x = x.reshape(-1, x.shape[-1]).to(self.mel_mean.device)
            with self._backend():
                mel = self.log_mel(x).double()
            total += mel.sum().item()
            total_sq += (mel * mel).sum().item()
            count += mel.numel()
        if count == 0:
            raise ValueError("audio: no audio to estimate the statistics from")
        mean = total / count
        std = max(total_sq / count - mean * mean, 0.0) ** 0.5
        self.mel_mean.fill_(mean)
        self.mel_std.fill_(max(std, 1e-5))

    @torch.no_grad()
    def targets(
        self, audio: torch.Tensor, normalized_mel: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean audio (B, samples) → (tokens (B, T) int64, stacked normalized mel (B, T, 512)).
        ``normalized_mel``: :meth:`normalized_mel` of ``audio`` when the caller has it."""
        if normalized_mel is None:
            normalized_mel = self.normalized_mel(audio)
        mel = ops.stack_frames(normalized_mel, STACK).transpose(1, 2)  # (B, T, F·4)
        return self.quantizer(mel), mel

    def _frontend(self, audio: torch.Tensor) -> torch.Tensor:
        return self.frontend(self.normalized_mel(audio))  # (B, T, D)

    # ------------------------------------------------------------------ pre-training
    def _token_mask(self, batch: int, tokens: int, seed: torch.Tensor) -> torch.Tensor:
        """The token-level mask of the spans that ``span_masker`` masks with ``seed``."""
        cfg = self.config
        return ops.span_mask(
            batch, tokens, cfg.span_tokens, cfg.mask_prob, seed=seed, device=seed.device
        )

    def _masked_frontend(
        self, audio: torch.Tensor, clean_mel: torch.Tensor, tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Front-end features of the masked input (B, T, D) and the token mask (B, T). One seed
        (a device tensor from the global RNG: no host sync, traceable) names the spans at both
        resolutions and seeds the noise, which Philox draws from other counters."""
        cfg = self.config
        seed = torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64, device=audio.device)
        token_mask = self._token_mask(audio.shape[0], tokens, seed)
        if cfg.mask_replacement == "noise":
            masked, _ = self.span_masker(audio.float(), seed=seed, force=True)
            return self._frontend(masked), token_mask
        h = self.frontend(clean_mel)  # the clean mel of the targets, not recomputed
        return ops.apply_span_mask(h, token_mask, mask_embedding=self.mask_embedding), token_mask

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Masked-token cross-entropy (+ MuseLQ's masked mel MSE); ``batch["audio"]``: (B,
        segment_samples) or (B, 1, segment_samples)."""
        return self.loss_terms(batch)["loss"]

    forward = loss

    def loss_terms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"loss", "ce", "mse", "accuracy", "mask_fraction"}`` for one batch."""
        cfg = self.config
        audio = C.get_audio(batch)
        if isinstance(audio, torch.Tensor) and audio.dim() == 3:
            if audio.shape[1] != 1:
                raise ValueError(
                    f"batch['audio']: expected (batch, samples) or (batch, 1, samples), got "
                    f"{tuple(audio.shape)} ({type(self).__name__} takes one view)"
                )
            audio = audio[:, 0]
        C.check_audio("batch['audio']", audio, ndim=2, min_samples=cfg.segment_samples)
        audio = audio[:, : cfg.segment_samples]
        with self._backend():
            clean = self.normalized_mel(audio)  # (B, F, frames), computed once
            tokens, mel = self.targets(audio, clean)  # (B, T), (B, T, F·4)
            h, token_mask = self._masked_frontend(audio, clean, tokens.shape[1])
            h = self.encoder(h)  # (B, T, D)
            weight = token_mask.to(torch.float32)  # 1 at masked tokens
            n_masked = weight.sum().clamp(min=1.0)
            logits = self.token_head(h).float()  # (B, T, codebook)
            ce = F.cross_entropy(logits.transpose(1, 2), tokens, reduction="none")  # (B, T)
            ce = (ce * weight).sum() / n_masked
            acc = ((logits.argmax(-1) == tokens).float() * weight).sum().detach() / n_masked
            out = {"ce": ce, "accuracy": acc, "mask_fraction": weight.mean().detach()}
            loss = ce
            if self.mel_head is not None:
                pred = self.mel_head(h).float()
                mse = ((pred - mel) ** 2).mean(dim=-1)  # (B, T)
                mse = (mse * weight).sum() / n_masked
                out["mse"] = mse
                loss = ce + cfg.mel_loss_weight * mse
            out["loss"] = loss
        return out

    # ------------------------------------------------------------------ embeddings
    def _hidden(self, audio, layer, sample_rate):
        C.check_sample_rate(sample_rate, self.sample_rate)
        C.check_audio("audio", audio, ndim=2, min_samples=2 * self.config.token_samples)
        layers, as_list = C.resolve_layers(layer, self.config.depth)
        with self._backend():
            _, outs = self.encoder(self._frontend(audio), layers)
        return outs, as_list

    def embed(
        self, audio: torch.Tensor, layer: C.Layer = None, *, sample_rate: int | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        """Time-averaged encoder output (B, D) of unmasked audio (B, samples)."""
        outs, as_list = self._hidden(audio, layer, sample_rate)
        pooled = [o.mean(dim=1) for o in outs]
        return pooled if as_list else pooled[0]

    def embed_frames(
        self, audio: torch.Tensor, layer: C.Layer = None, *, sample_rate: int | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        """Encoder output (B, T, D) at 25 Hz (one step per 960 samples)."""
        outs, as_list = self._hidden(audio, layer, sample_rate)
        return outs if as_list else outs[0]


def bestrq_config(
    encoder: str = "conformer", mixer: str = "attention", size: str = "large", **overrides: Any
) -> BestRQConfig:
    size = _SIZE_ALIASES.get(size, size)
    if size not in BESTRQ_SIZES:
        raise ValueError(
            f"size: expected one of {list(BESTRQ_SIZES) + list(_SIZE_ALIASES)}, got {size!r}"
        )
    base: dict[str, Any] = dict(encoder=encoder, mixer=mixer, size=size)
    base.update(BESTRQ_SIZES[size])
    if encoder == "branchformer":
        base.update(mask_prob=0.2, mel_loss_weight=1.0)
    base.update(overrides)
    return BestRQConfig(**base)
