"""Public checkpoints → muse_fast models: MusicFM (``from_musicfm``) and Myna (``from_myna``).

Both rename keys (and, for MusicFM, concatenate q / k / v and squeeze 1 × 1 convs), drop the
keys that have no counterpart on purpose (listed below), and refuse a checkpoint with any other
missing or unexpected key, naming them — never ``strict=False``.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import torch

from .bestrq import BestRQ, bestrq_config
from .myna import Myna, myna_config

__all__ = ["from_musicfm", "from_myna"]

# MusicFM keys with no counterpart: the unused class token, HF's positional conv (built but not
# run with rotary embeddings), the rotary frequencies (recomputed) and torchaudio's mel buffers
_MUSICFM_DROP = re.compile(
    r"^(cls_token|conformer\.pos_conv_embed\..*|conformer\.embed_positions\..*"
    r"|preprocessor_melspec_2048\..*)$"
)
# ours, not in MusicFM's state dict: filled from the stats json / left at their defaults
_MUSICFM_OURS = ("mel_mean", "mel_std", "quantizer.mean", "quantizer.std")

_LAYER_MAP = {
    "ffn1_layer_norm": "ffn1.net.0",
    "ffn1.intermediate_dense": "ffn1.net.1",
    "ffn1.output_dense": "ffn1.net.4",
    "ffn2_layer_norm": "ffn2.net.0",
    "ffn2.intermediate_dense": "ffn2.net.1",
    "ffn2.output_dense": "ffn2.net.4",
    "self_attn_layer_norm": "norm_mixer",
    "self_attn.linear_out": "mixer.out_proj",
    "conv_module.layer_norm": "conv.norm_in",
    "conv_module.pointwise_conv1": "conv.pointwise1",
    "conv_module.depthwise_conv": "conv.depthwise",
    "conv_module.batch_norm": "conv.norm_conv",
    "conv_module.pointwise_conv2": "conv.pointwise2",
    "final_layer_norm": "norm_out",
}
_RES_MAP = {"conv3": "shortcut.0", "bn3": "shortcut.1"}


def _load(checkpoint: str | os.PathLike | dict) -> dict[str, torch.Tensor]:
    if isinstance(checkpoint, (str, os.PathLike)):
        try:
            checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as e:  # e.g. a Lightning checkpoint pickling its hyper-parameters
            raise ValueError(
                f"checkpoint: {checkpoint} does not load with weights_only=True ({e}); if you "
                "trust the file, pass torch.load(path, weights_only=False) instead of the path"
            ) from None
    if not isinstance(checkpoint, dict):
        raise TypeError(f"checkpoint: expected a path or a state dict, got {type(checkpoint)}")
    for key in ("state_dict", "model"):
        if key in checkpoint and isinstance(checkpoint[key], dict):
            checkpoint = checkpoint[key]
    return dict(checkpoint)


def _refuse(what: str, unexpected: list[str], missing: list[str]) -> None:
    if unexpected or missing:
        raise ValueError(
            f"checkpoint: not a {what} state dict — unexpected keys {sorted(unexpected)}, "
            f"missing keys {sorted(missing)}"
        )


def _musicfm_key(k: str) -> str | None:
    """MusicFM key → ours (None: handled elsewhere)."""
    m = re.match(r"conv\.conv\.(\d)\.(conv1|bn1|conv2|bn2|conv3|bn3)\.(.*)", k)
    if m:
        return f"frontend.conv.{m[1]}.{_RES_MAP.get(m[2], m[2])}.{m[3]}"
    if k.startswith("conv.linear."):
        return "frontend." + k[len("conv.") :]
    if k.startswith("conformer.layer_norm."):
        return "encoder.norm." + k.split(".")[-1]
    m = re.match(r"conformer\.layers\.(\d+)\.(.*)\.(\w+)$", k)
    if m and m[2] in _LAYER_MAP:
        return f"encoder.layers.{m[1]}.{_LAYER_MAP[m[2]]}.{m[3]}"
    if k.startswith("linear."):
        return "token_head." + k.split(".")[-1]
    m = re.match(r"quantizer_melspec_2048_0\.(random_projection|codebook)$", k)
    if m:
        return "quantizer." + m[1]
    return None


def _musicfm_stats(stats_json: str | os.PathLike | dict) -> tuple[float, float]:
    stats = stats_json
    if isinstance(stats_json, (str, os.PathLike)):
        with open(stats_json) as f:
            stats = json.load(f)
    try:
        return float(stats["melspec_2048_mean"]), float(stats["melspec_2048_std"])
    except (KeyError, TypeError):
        raise ValueError(
            "stats_json: expected MusicFM's stats with keys 'melspec_2048_mean' and "
            f"'melspec_2048_std', got {stats!r:.120}"
        ) from None


def from_musicfm(
    checkpoint: str | os.PathLike | dict, stats_json: str | os.PathLike | dict, **overrides: Any
) -> BestRQ:
    """A ``MusicFM25Hz`` checkpoint (path, Lightning ``{"state_dict": ...}`` with ``model.``
    prefixes, or a plain state dict) and its stats json → :class:`BestRQ` (``size="musicfm"``).

    Geometry (dim, depth, FFN width, front-end channels, codebook) is read from the weights;
    ``heads`` (16) cannot be and is an override. MusicFM's ``get_latent(x, layer_ix=k)`` for
    ``k ≥ 1`` is our ``embed_frames(x, layer=k - 1)`` (its ``hidden_states[0]`` is the front-end
    output, which we do not expose; ``k = depth`` is our default, after the final LayerNorm).
    """
    sd = _load(checkpoint)
    sd = {k[len("model.") :] if k.startswith("model.") else k: v for k, v in sd.items()}
    mean, std = _musicfm_stats(stats_json)
    layers = {int(m[1]) for k in sd if (m := re.match(r"conformer\.layers\.(\d+)\.", k))}
    try:
        geometry = dict(
            dim=sd["conformer.layer_norm.weight"].shape[0],
            depth=len(layers),
            ffn_dim=sd["conformer.layers.0.ffn1.intermediate_dense.weight"].shape[0],
            conv_dim=sd["conv.conv.0.conv1.weight"].shape[0],
            codebook_size=sd["linear.weight"].shape[0],
            codebook_dim=sd["quantizer_melspec_2048_0.codebook"].shape[1],
            kernel_size=sd["conformer.layers.0.conv_module.depthwise_conv.weight"].shape[-1],
        )
    except KeyError as e:
        raise ValueError(f"checkpoint: not a MusicFM25Hz state dict (no key {e})") from None
    geometry["n_mels"] = sd["conv.linear.weight"].shape[1] // geometry["conv_dim"] * 4
    config = bestrq_config("conformer", "attention", "musicfm", **{**geometry, **overrides})
    config.mel_mean, config.mel_std = mean, std
    model = BestRQ(config)
    ours = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unexpected = []
    for k, v in sd.items():
        if _MUSICFM_DROP.match(k):
            continue
        m = re.match(r"conformer\.layers\.(\d+)\.self_attn\.linear_([qkv])\.(weight|bias)$", k)
        if m:
            continue  # concatenated below
        new = _musicfm_key(k)
        if new is None:
            unexpected.append(k)
            continue
        if new.endswith(("pointwise1.weight", "pointwise2.weight")):
            v = v.squeeze(-1)  # Conv1d(kernel 1) → Linear
        mapped[new] = v
    for i in sorted(layers):
        for p in ("weight", "bias"):
            parts = [sd.get(f"conformer.layers.{i}.self_attn.linear_{c}.{p}") for c in "qkv"]
            if all(t is not None for t in parts):
                mapped[f"encoder.layers.{i}.mixer.qkv.{p}"] = torch.cat(parts)
    for k in _MUSICFM_OURS:
        mapped.setdefault(k, ours[k])
    unexpected += [k for k in mapped if k not in ours]
    _refuse("MusicFM25Hz", unexpected, [k for k in ours if k not in mapped])
    model.load_state_dict(mapped, strict=True)
    return model


# ------------------------------------------------------------------------------------- Myna
def _myna_key(k: str) -> str | None:
    m = re.match(r"to_patch_embedding(_b)?\.([123])\.(weight|bias)$", k)
    if m:
        part = {"1": "norm_in", "2": "proj", "3": "norm_out"}[m[2]]
        return f"embeds.{1 if m[1] else 0}.{part}.{m[3]}"
    m = re.match(r"transformer\.layers\.(\d+)\.0\.(norm|to_qkv|to_out)\.(weight|bias)$", k)
    if m:
        part = {"norm": "norm", "to_qkv": "qkv", "to_out": "out_proj"}[m[2]]
        return f"transformer.layers.{m[1]}.attn.{part}.{m[3]}"
    m = re.match(r"transformer\.layers\.(\d+)\.1\.net\.([013])\.(weight|bias)$", k)
    if m:
        return f"transformer.layers.{m[1]}.ff.net.{ {'0': 0, '1': 1, '3': 4}[m[2]] }.{m[3]}"
    if re.match(r"transformer\.norm\.(weight|bias)$", k):
        return k
    return None


def from_myna(
    checkpoint: str | os.PathLike | dict,
    *,
    log_mel: bool,
    patch: str | None = None,
    dim_head: int = 64,
    **overrides: Any,
) -> Myna:
    """A Myna / vit-pytorch ``SimpleViT`` checkpoint → :class:`Myna` (key rename; the
    pre-training ``linear_head`` is dropped and ours keeps its initialization — embeddings do not
    use it, as in Myna's ``example.py``).

    ``log_mel``: whether the checkpoint was trained on ``log1p`` mels (Myna's ``--log_mel``); the
    public checkpoints do not record it, so it must be given. ``patch``: ``"base"`` (16 × 16) or
    ``"vertical"`` (128 × 2) for single-embedding checkpoints; a checkpoint with
    ``to_patch_embedding_b`` is ``"hybrid"``. ``model.embed_chunks(audio)`` is ``example.py``'s
    inference path (whole chunks of ``n_frames`` = 96 frames, mean-pooled, hybrid concatenated).
    """
    if not isinstance(log_mel, bool):
        raise TypeError(f"log_mel: expected a bool, got {type(log_mel).__name__}")
    sd = _load(checkpoint)
    hybrid = any(k.startswith("to_patch_embedding_b.") for k in sd)
    if hybrid:
        if patch not in (None, "hybrid"):
            raise ValueError(
                f"patch: the checkpoint has two patch embeddings (hybrid), got {patch!r}"
            )
        patch = "hybrid"
    elif patch not in ("base", "vertical"):
        raise ValueError(
            "patch: a single-embedding Myna checkpoint needs patch='base' (16 × 16) or "
            f"'vertical' (128 × 2), got {patch!r}"
        )
    layers = {int(m[1]) for k in sd if (m := re.match(r"transformer\.layers\.(\d+)\.", k))}
    try:
        inner = sd["transformer.layers.0.0.to_qkv.weight"].shape[0] // 3
        geometry = dict(
            dim=sd["transformer.norm.weight"].shape[0],
            depth=len(layers),
            mlp_dim=sd["transformer.layers.0.1.net.1.weight"].shape[0],
            dim_head=dim_head,
            heads=inner // dim_head,
        )
    except KeyError as e:
        raise ValueError(f"checkpoint: not a Myna SimpleViT state dict (no key {e})") from None
    config = myna_config(patch, "tiny", log_mel=log_mel, **{**geometry, **overrides})
    config.size = "custom"
    model = Myna(config)
    ours = model.state_dict()
    mapped, unexpected = {}, []
    for k, v in sd.items():
        if k.startswith("linear_head."):
            continue
        new = _myna_key(k)
        if new is None:
            unexpected.append(k)
        else:
            mapped[new] = v
    for k in ours:
        if k.startswith("linear_head."):
            mapped[k] = ours[k]
    unexpected += [k for k in mapped if k not in ours]
    _refuse("Myna SimpleViT", unexpected, [k for k in ours if k not in mapped])
    model.load_state_dict(mapped, strict=True)
    return model
