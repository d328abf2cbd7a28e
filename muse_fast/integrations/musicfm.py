"""MusicFM (minzwon/musicfm ``MusicFM25Hz``) and MuQ (tencent-ailab/MuQ ``MuQModel``) on
muse_fast's ops, patched in place.

``apply_muse_fast_to_musicfm(model)`` rebinds methods of the *instance* (no parameter or buffer
is added, renamed or removed; the one module it adds, the fused mel, holds non-persistent buffers
only), so ``model.state_dict()`` keys stay and ``load_state_dict(strict=True)`` of a MusicFM
checkpoint still works:

* ``preprocessing``: the fused mel (:class:`muse_fast.nn.MelSpectrogram` with the arguments of
  the model's own torchaudio ``MelSpectrogram`` + ``AmplitudeToDB``), last frame dropped;
* ``rearrange``: :func:`muse_fast.ops.stack_frames` (``b f (t s) -> b t (s f)``, s = 4);
* ``tokenize``: :func:`muse_fast.ops.random_projection_quantize` on the model's
  ``quantizer_<feature>_<i>`` buffers (upstream looks up ``quantizer_<feature>``, which the
  constructor never registers, and crashes in ``forward``);
* ``masking``: sync-free span masking (:func:`muse_fast.ops.span_mask` at sample and token
  resolution from one device seed, :func:`muse_fast.ops.apply_span_mask` noise N(0, 0.1²));
  it returns a boolean token mask (B, T) instead of ``nonzero`` indices;
* ``get_loss``: masked cross-entropy as a weighted mean (no boolean indexing); it also accepts
  upstream's (N, 2) index tensors;
* ``encoder``: a loop over the HF ``Wav2Vec2ConformerEncoderLayer`` submodules with SDPA
  attention that keeps HF's rotary on the attention *input* (angles from the module's own
  ``inv_freq``), layerdrop without a host sync, and ``hidden_states`` returned on transformers 4
  and 5 (``len = depth + 1``: the front-end output, each block's input, and the last block's
  output after the final LayerNorm, as HF).

``musicfm_config()`` returns the ``Wav2Vec2ConformerConfig`` MusicFM fetches from the hub
(``facebook/wav2vec2-conformer-rope-large-960h-ft``), built offline.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import nn as mnn
from .. import ops
from ._util import class_names, major_version, warn_once

__all__ = ["apply_muse_fast_to_musicfm", "is_musicfm", "musicfm_config"]

TESTED_TRANSFORMERS = (4, 5)  # major versions the patch is tested against (4.57, 5.24)
_MEL_ATTR = "muse_fast_mel"


def musicfm_config(**overrides: Any):
    """HF ``Wav2Vec2ConformerConfig`` of MusicFM's encoder (rotary, Swish, kernel 31, 1024 × 12,
    16 heads, FFN 4096), built without the network. ``overrides`` set any config field (tests:
    ``hidden_size=32, num_hidden_layers=2, ...``)."""
    from transformers import Wav2Vec2ConformerConfig

    base = dict(
        hidden_size=1024,
        num_hidden_layers=12,
        num_attention_heads=16,
        intermediate_size=4096,
        hidden_act="swish",
        position_embeddings_type="rotary",
        rotary_embedding_base=10000,
        conv_depthwise_kernel_size=31,
        layer_norm_eps=1e-5,
    )
    base.update(overrides)
    return Wav2Vec2ConformerConfig(**base)


def is_musicfm(model: object) -> bool:
    """MusicFM25Hz / MuQModel by class name, confirmed by structure (conv front end, HF
    conformer, output linear, mel preprocessor)."""
    names = class_names(model)
    if not any(n in ("MusicFM25Hz", "MuQModel") for n in names):
        return False
    return all(
        hasattr(model, a) for a in ("conv", "conformer", "linear", "preprocessor_melspec_2048")
    )


def _check_transformers() -> None:
    v, major = major_version("transformers")
    if major not in TESTED_TRANSFORMERS:
        warn_once(
            "transformers-version",
            f"muse_fast.integrations.musicfm is tested with transformers "
            f"{'/'.join(f'{m}.x' for m in TESTED_TRANSFORMERS)}, found {v or 'none'}; the patched "
            f"encoder only reads the layers' submodules, check its outputs once",
        )


def _fused_mel(pre: nn.Module) -> mnn.MelSpectrogram:
    """muse_fast mel with the arguments of MusicFM's ``MelSTFT`` (torchaudio modules)."""
    stft = pre.mel_stft
    scale = stft.mel_scale
    db = getattr(pre, "amplitude_to_db", None) if getattr(pre, "is_db", False) else None
    if db is not None and (db.stype != "power" or db.amin != 1e-10 or db.ref_value != 1.0):
        raise ValueError(
            "model.preprocessor_melspec_2048: expected AmplitudeToDB(stype='power') with amin "
            f"1e-10 and ref 1, got stype={db.stype!r}, amin={db.amin}, ref={db.ref_value}"
        )
    return mnn.MelSpectrogram(
        sample_rate=stft.sample_rate,
        n_fft=stft.n_fft,
        win_length=stft.win_length,
        hop_length=stft.hop_length,
        f_min=stft.f_min,
        f_max=stft.f_max,
        pad=stft.pad,
        n_mels=stft.n_mels,
        power=stft.power,
        normalized=stft.normalized,
        center=stft.spectrogram.center,
        pad_mode=stft.spectrogram.pad_mode,
        mel_scale=scale.mel_scale,
        norm=scale.norm,
        log="db" if db is not None else None,
        top_db=None if db is None else db.top_db,
    )


# ---------------------------------------------------------------------------------- methods
@torch.no_grad()
def _preprocessing(self, x: torch.Tensor, features):
    out = {}
    for key in features:
        if key != "melspec_2048":
            raise ValueError(f"features: the patch computes 'melspec_2048' only, got {key!r}")
        mel = getattr(self, _MEL_ATTR)
        with torch.autocast(x.device.type, enabled=False):
            m = mel(x.float())[..., :-1]
        out[key] = m.half() if x.dtype == torch.float16 else m
    return out


@torch.no_grad()
def _rearrange(self, x: dict):
    for key in x:
        if key == "chromagram":
            x[key] = x[key].transpose(1, 2)
        else:
            x[key] = ops.stack_frames(x[key], 4).transpose(1, 2)  # (B, T/4, 4·F)
    return x


def _quantizer(self, key: str) -> nn.Module:
    for name in (f"quantizer_{key}_0", f"quantizer_{key}"):
        q = getattr(self, name, None)
        if q is not None:
            return q
    raise ValueError(f"model: no quantizer_{key}_0 / quantizer_{key} module for feature {key!r}")


@torch.no_grad()
def _tokenize(self, x: dict):
    out = {}
    for key, v in x.items():
        q = _quantizer(self, key)
        out[key] = ops.random_projection_quantize(v.float(), q.random_projection, q.codebook)
    return out


def _masking(self, x: torch.Tensor):
    """(masked audio, token mask (B, n_spans · tokens_per_span) bool) without a host sync."""
    b, t = x.shape
    span = int(24000 * self.mask_hop)  # MusicFM's rate is fixed at 24 kHz
    span_tokens = int(24000 / self.hop_length / 2 / 2 * self.mask_hop)
    n_spans = t // span
    seed = torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64, device=x.device)
    head = x[:, : n_spans * span]
    sample_mask = ops.span_mask(b, n_spans * span, span, self.mask_prob, seed=seed, device=x.device)
    head = ops.apply_span_mask(head, sample_mask, noise_std=0.1, seed=seed)
    mx = torch.cat([head, x[:, n_spans * span :]], dim=1)
    token_mask = ops.span_mask(
        b, n_spans * span_tokens, span_tokens, self.mask_prob, seed=seed, device=x.device
    )
    return mx, token_mask


def _as_weights(masked: torch.Tensor, b: int, t: int, device) -> torch.Tensor:
    """A bool mask (B, T') or upstream's (N, 2) indices → float weights (B, T)."""
    if masked.dtype == torch.bool:
        w = masked.to(device=device, dtype=torch.float32)
        return F.pad(w, (0, t - w.shape[1])) if w.shape[1] < t else w[:, :t]
    w = torch.zeros(b, t, device=device)
    w[masked[:, 0].to(device), masked[:, 1].to(device)] = 1.0
    return w


def _get_loss(self, logits: dict, target_tokens: dict, masked: torch.Tensor):
    losses, accuracies = {}, {}
    for key, lg in logits.items():
        tok = target_tokens[key]
        b, t = tok.shape
        w = _as_weights(masked, b, t, lg.device)
        n = w.sum().clamp(min=1.0)
        ce = F.cross_entropy(lg.float().transpose(1, 2), tok, reduction="none")  # (B, T)
        losses[key] = (ce * w).sum() / n
        accuracies[key] = ((lg.argmax(-1) == tok).float() * w).sum() / n
    return losses, accuracies


def _attention(attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """HF rotary self-attention (rotary on the input of q / k), through SDPA."""
    b, t, d = x.shape
    h = attn.num_heads
    xh = x.view(b, t, h, d // h)
    half = xh.shape[-1] // 2
    rot = torch.cat([-xh[..., half:], xh[..., :half]], dim=-1)
    xr = (xh * cos + rot * sin).reshape(b, t, d)  # (B, T, D)
    q = attn.linear_q(xr).view(b, t, h, -1).transpose(1, 2)  # (B, H, T, Dh)
    k = attn.linear_k(xr).view(b, t, h, -1).transpose(1, 2)
    v = attn.linear_v(x).view(b, t, h, -1).transpose(1, 2)
    p = attn.dropout.p if attn.training else 0.0
    o = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
    return attn.linear_out(o.transpose(1, 2).reshape(b, t, d))


def _layer(layer: nn.Module, x: torch.Tensor, cos, sin) -> torch.Tensor:
    x = x + 0.5 * layer.ffn1(layer.ffn1_layer_norm(x))
    x = x + layer.self_attn_dropout(
        _attention(layer.self_attn, layer.self_attn_layer_norm(x), cos, sin)
    )
    x = x + layer.conv_module(x)
    x = x + 0.5 * layer.ffn2(layer.ffn2_layer_norm(x))
    return layer.final_layer_norm(x)


def conformer_hidden_states(conformer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """HF ``Wav2Vec2ConformerEncoder`` (rotary) forward → its ``hidden_states`` tuple (depth + 1
    entries, the last after the final LayerNorm)."""
    if conformer.config.position_embeddings_type != "rotary":
        raise ValueError(
            "model.conformer: the patch supports position_embeddings_type='rotary' (MusicFM / "
            f"MuQ), got {conformer.config.position_embeddings_type!r}"
        )
    x = conformer.dropout(x)
    inv_freq = conformer.embed_positions.inv_freq
    angles = torch.arange(x.shape[1], device=x.device).type_as(inv_freq)[:, None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)[:, None, :]  # (T, 1, Dh): broadcast over heads
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    hidden = []
    p = conformer.config.layerdrop
    for layer in conformer.layers:
        hidden.append(x)
        y = _layer(layer, x, cos, sin)
        if conformer.training and p > 0:
            keep = torch.rand((), device=x.device) >= p  # no host sync: both branches computed
            y = torch.where(keep, y, x)
        x = y
    x = conformer.layer_norm(x)
    hidden.append(x)
    return tuple(hidden)


def _encoder(self, x: torch.Tensor, *args, **kwargs):
    x = self.conv(x)
    hidden = conformer_hidden_states(self.conformer, x)
    logits = self.linear(hidden[-1])
    logits = {
        key: logits[:, :, i * self.codebook_size : (i + 1) * self.codebook_size]
        for i, key in enumerate(self.features)
    }
    return logits, hidden


def apply_muse_fast_to_musicfm(model: nn.Module, *, masking: bool = True) -> nn.Module:
    """Patch a ``MusicFM25Hz`` (all of the above) or a ``MuQModel`` (mel and encoder only: its
    RVQ targets and masking keep their own code) in place; returns ``model``."""
    if not is_musicfm(model):
        raise TypeError(
            "model: expected a MusicFM25Hz or MuQModel (attributes conv, conformer, linear, "
            f"preprocessor_melspec_2048), got {type(model).__name__}"
        )
    _check_transformers()
    pre = model.preprocessor_melspec_2048
    setattr(model, _MEL_ATTR, _fused_mel(pre).to(next(model.parameters()).device))
    bind = lambda fn: types.MethodType(fn, model)  # noqa: E731
    model.preprocessing = bind(_preprocessing)
    model.rearrange = bind(_rearrange)
    if "MuQModel" in class_names(model):
        model.conformer.forward = types.MethodType(_hf_encoder_forward, model.conformer)
        return model
    model.encoder = bind(_encoder)
    model.tokenize = bind(_tokenize)
    model.get_loss = bind(_get_loss)
    if masking:
        model.masking = bind(_masking)
    return model


def _hf_encoder_forward(self, hidden_states, attention_mask=None, output_hidden_states=False, **_):
    """Drop-in ``Wav2Vec2ConformerEncoder.forward`` (no padding mask) for MuQ."""
    if attention_mask is not None:
        raise NotImplementedError("attention_mask: the patched encoder takes unpadded batches")
    from transformers.modeling_outputs import BaseModelOutput

    hidden = conformer_hidden_states(self, hidden_states)
    return BaseModelOutput(
        last_hidden_state=hidden[-1], hidden_states=hidden if output_hidden_states else None
    )
