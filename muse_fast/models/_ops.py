"""TEMPORARY: resolves the ops/layers the models use from muse_fast.ops / muse_fast.nn /
muse_fast.nn.blocks, with eager stand-ins for those that have not landed yet. To be removed
(replaced by direct imports) once every op is in."""

from __future__ import annotations

import importlib
import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn


class _Resolver:
    def __init__(self, module: str, fallback: dict) -> None:
        self._module = module
        self._fallback = fallback

    def __getattr__(self, name: str):
        try:
            mod = importlib.import_module(self._module)
            if hasattr(mod, name):
                return getattr(mod, name)
        except ImportError:
            pass
        return self._fallback[name]


# ---------------------------------------------------------------- fallback ops
_PRESETS = {
    "musicfm": dict(sample_rate=24000, n_fft=2048, hop_length=240, n_mels=128, log="db"),
    "myna": dict(
        sample_rate=16000,
        n_fft=2048,
        hop_length=512,
        n_mels=128,
        mel_scale="slaney",
        norm="slaney",
        log="log1p",
    ),
}


class _Mel(nn.Module):
    def __init__(self, preset: str, n_mels: int = 128) -> None:
        super().__init__()
        import torchaudio

        p = dict(_PRESETS[preset])
        self.log = p.pop("log")
        p["n_mels"] = n_mels
        self.t = torchaudio.transforms.MelSpectrogram(**p)

    def forward(self, x):
        m = self.t(x)
        if self.log == "db":
            return 10 * torch.log10(m.clamp(min=1e-10))
        return torch.log1p(m)


def _random_token_mask(batch, length, mask_ratio=0.9, *, generator=None, seed=None, device=None):
    n_keep = max(1, int(length * (1 - mask_ratio)))
    r = torch.rand(batch, length, device=device)
    return r.argsort(dim=1)[:, :n_keep].sort(dim=1).values


def _masked_patch_embed(
    spec, keep_idx, patch_size, weight, bias=None, pos_embed=None, *, norm_eps=None
):
    ph, pw = patch_size
    b, f, t = spec.shape
    p = spec.reshape(b, f // ph, ph, t // pw, pw).permute(0, 1, 3, 2, 4).reshape(b, -1, ph * pw)
    p = p.gather(1, keep_idx[..., None].expand(-1, -1, ph * pw))
    if norm_eps is not None:
        p = F.layer_norm(p, (ph * pw,), eps=norm_eps)
    out = F.linear(p, weight.to(p.dtype), None if bias is None else bias.to(p.dtype))
    return out


def _span_mask(batch, frames, span, prob, *, generator=None, seed=None, device=None):
    g = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    n = frames // span
    m = torch.rand(batch, n, generator=g) < prob
    m = m.repeat_interleave(span, dim=1)
    m = F.pad(m, (0, frames - m.shape[1]))
    return m.to(device)


def _apply_span_mask(x, mask, *, noise_std=None, mask_embedding=None, generator=None, seed=None):
    if mask_embedding is not None:
        return torch.where(mask[..., None], mask_embedding.to(x.dtype), x)
    g = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    noise = torch.randn(x.shape, generator=g).to(x) * noise_std
    return torch.where(mask, noise, x)


class _RPQ(nn.Module):
    def __init__(
        self,
        input_dim,
        codebook_size=8192,
        codebook_dim=16,
        num_codebooks=1,
        seed=0,
        normalize_input=False,
    ):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        a = torch.empty(input_dim, codebook_dim)
        std = math.sqrt(2.0 / (input_dim + codebook_dim))
        self.register_buffer("projection", torch.randn(input_dim, codebook_dim, generator=g) * std)
        self.register_buffer("codebook", torch.randn(codebook_size, codebook_dim, generator=g))
        del a

    def forward(self, x):
        y = F.normalize(x.float() @ self.projection, dim=-1)
        c = F.normalize(self.codebook, dim=-1)
        return (y @ c.t()).argmax(-1)


class _NTXent(nn.Module):
    def __init__(self, temperature=0.1, normalize=True, gather_distributed=True):
        super().__init__()
        self.t = temperature

    def forward(self, z1, z2):
        z = F.normalize(torch.cat([z1, z2]).float(), dim=-1)
        n = z1.shape[0]
        s = z @ z.t() / self.t
        s = s.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
        return F.cross_entropy(s, target)


class _GCL(_NTXent):
    def __init__(self, dataset_size, temperature=0.1, gamma=0.9, **kw):
        super().__init__(temperature)

    def forward(self, z1, z2, index):
        return super().forward(z1, z2)


class _MHSA(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.qkv = nn.Linear(d, 3 * d)
        self.o = nn.Linear(d, d)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.h, -1).permute(2, 0, 3, 1, 4)
        return self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class _Conformer(nn.Module):
    def __init__(
        self, d_model, nhead, ffn_dim, kernel_size=31, dropout=0.0, mixer="attention", **kw
    ):
        super().__init__()
        self.ff1 = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, ffn_dim),
            nn.SiLU(),
            nn.Linear(ffn_dim, d_model),
        )
        self.ff2 = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, ffn_dim),
            nn.SiLU(),
            nn.Linear(ffn_dim, d_model),
        )
        self.ln = nn.LayerNorm(d_model)
        self.att = _MHSA(d_model, nhead)
        self.conv_ln = nn.LayerNorm(d_model)
        self.pw1 = nn.Linear(d_model, 2 * d_model)
        self.dw = nn.Conv1d(d_model, d_model, kernel_size, padding=kernel_size // 2, groups=d_model)
        self.pw2 = nn.Linear(d_model, d_model)
        self.out = nn.LayerNorm(d_model)

    def forward(self, x, mask=None):
        x = x + 0.5 * self.ff1(x)
        x = x + self.att(self.ln(x))
        c = F.glu(self.pw1(self.conv_ln(x)), dim=-1)
        x = x + self.pw2(F.silu(self.dw(c.transpose(1, 2)).transpose(1, 2)))
        return self.out(x + 0.5 * self.ff2(x))


class _Branchformer(nn.Module):
    def __init__(
        self, d_model, nhead, cgmlp_dim=None, kernel_size=31, dropout=0.0, mixer="attention", **kw
    ):
        super().__init__()
        cg = cgmlp_dim or 6 * d_model
        self.ln1 = nn.LayerNorm(d_model)
        self.att = _MHSA(d_model, nhead)
        self.ln2 = nn.LayerNorm(d_model)
        self.up = nn.Linear(d_model, cg)
        self.gln = nn.LayerNorm(cg // 2)
        self.dw = nn.Conv1d(cg // 2, cg // 2, kernel_size, padding=kernel_size // 2, groups=cg // 2)
        self.down = nn.Linear(cg // 2, d_model)
        self.merge = nn.Linear(2 * d_model, d_model)

    def forward(self, x, mask=None):
        a = self.att(self.ln1(x))
        u, g = F.gelu(self.up(self.ln2(x))).chunk(2, dim=-1)
        g = self.dw(self.gln(g).transpose(1, 2)).transpose(1, 2)
        c = self.down(u * g)
        return x + self.merge(torch.cat([a, c], dim=-1))


ops = _Resolver(
    "muse_fast.ops",
    dict(
        random_token_mask=_random_token_mask,
        masked_patch_embed=_masked_patch_embed,
        span_mask=_span_mask,
        apply_span_mask=_apply_span_mask,
    ),
)
mnn = _Resolver(
    "muse_fast.nn",
    dict(
        MelSpectrogram=_Mel,
        RandomProjectionQuantizer=_RPQ,
        NTXentLoss=_NTXent,
        GlobalContrastiveLoss=_GCL,
    ),
)
blocks = _Resolver(
    "muse_fast.nn.blocks", dict(ConformerBlock=_Conformer, BranchformerBlock=_Branchformer)
)
_ = SimpleNamespace
