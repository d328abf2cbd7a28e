"""A stand-in for minzwon/musicfm's ``MusicFM25Hz`` (not on PyPI), written for these tests from
its published description: torchaudio mel + AmplitudeToDB with the last frame dropped, a frozen
random-projection quantizer seeded through the global RNG, two residual conv blocks, HF
``Wav2Vec2ConformerEncoder`` (from the installed ``transformers``), a Linear to the codebook, and
MusicFM's CPU ``rand`` / ``nonzero`` masking. Attribute names follow MusicFM's state dict so
that :func:`muse_fast.integrations.apply_muse_fast` and ``from_musicfm`` see the real layout.

Two deliberate differences: the hidden states are recorded with hooks (MusicFM reads
``hidden_states`` from the encoder's output, which transformers 5 no longer returns), and ``tokenize`` looks up ``quantizer_<feature>_0`` (the module the
constructor registers); upstream's ``quantizer_<feature>`` lookup crashes, so it could not serve
as the unpatched baseline.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn


class _Quantizer(nn.Module):
    def __init__(self, input_dim: int, codebook_dim: int, codebook_size: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)  # MusicFM seeds the global generator
        proj = torch.empty(input_dim, codebook_dim)
        nn.init.xavier_normal_(proj)
        self.register_buffer("random_projection", proj)
        codebook = torch.empty(codebook_size, codebook_dim)
        nn.init.normal_(codebook)
        self.register_buffer("codebook", codebook)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        y = torch.einsum("bnd,de->bne", x, self.random_projection).reshape(
            -1, self.codebook.shape[1]
        )
        y = nn.functional.normalize(y, dim=1)
        cb = nn.functional.normalize(self.codebook, dim=1)
        return torch.cdist(cb, y).argmin(dim=0).view(b, -1)


class _Res2d(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, stride=2)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv3 = nn.Conv2d(cin, cout, 3, padding=1, stride=2)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(self.bn3(self.conv3(x)) + out)


class _Subsampling(nn.Module):
    def __init__(self, channels: int, dim: int, n_mels: int):
        super().__init__()
        self.conv = nn.Sequential(_Res2d(1, channels), _Res2d(channels, channels))
        self.linear = nn.Linear(channels * n_mels // 4, dim)

    def forward(self, x):
        x = self.conv(x.unsqueeze(1))  # (B, C, F/4, T/4)
        b, c, f, t = x.shape
        return self.linear(x.permute(0, 3, 1, 2).reshape(b, t, c * f))


class _MelSTFT(nn.Module):
    def __init__(self, n_fft: int = 2048, hop_length: int = 240, n_mels: int = 128):
        super().__init__()
        self.mel_stft = torchaudio.transforms.MelSpectrogram(
            sample_rate=24000, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels
        )
        self.is_db = True
        self.amplitude_to_db = torchaudio.transforms.AmplitudeToDB()

    def forward(self, x):
        return self.amplitude_to_db(self.mel_stft(x))


class MusicFM25Hz(nn.Module):
    def __init__(self, config, *, n_mels=128, conv_dim=8, codebook_size=64, stats=(6.77, 18.4)):
        super().__init__()
        from transformers.models.wav2vec2_conformer.modeling_wav2vec2_conformer import (
            Wav2Vec2ConformerEncoder,
        )

        self.hop_length, self.mask_hop, self.mask_prob = 240, 0.4, 0.6
        self.num_codebooks, self.codebook_size = 1, codebook_size
        self.features = ["melspec_2048"]
        self.stat = {"melspec_2048_mean": stats[0], "melspec_2048_std": stats[1]}
        self.preprocessor_melspec_2048 = _MelSTFT(n_mels=n_mels)
        self.quantizer_melspec_2048_0 = _Quantizer(n_mels * 4, 16, codebook_size, seed=142)
        self.conv = _Subsampling(conv_dim, config.hidden_size, n_mels)
        self.conformer = Wav2Vec2ConformerEncoder(config)
        self.linear = nn.Linear(config.hidden_size, codebook_size)
        self.loss = nn.CrossEntropyLoss()
        self.cls_token = nn.Parameter(torch.randn(config.hidden_size))

    def masking(self, x):
        mx = x.clone()
        b, t = mx.shape
        raw = int(24000 * self.mask_hop)
        tok = int(24000 / self.hop_length / 4 * self.mask_hop)
        starts = torch.rand(b, t // raw) < self.mask_prob
        time_idx = torch.nonzero(starts.repeat_interleave(raw, dim=1))
        token_idx = torch.nonzero(starts.repeat_interleave(tok, dim=1))
        noise = torch.randn(time_idx.shape[0], dtype=x.dtype) * 0.1
        mx[tuple(time_idx.t())] = noise.to(x.device)
        return mx, token_idx

    @torch.no_grad()
    def preprocessing(self, x, features):
        return {
            k: getattr(self, f"preprocessor_{k}").float()(x.float())[..., :-1] for k in features
        }

    def encoder(self, x):
        x = self.conv(x)
        # each layer's input, recorded by hooks: transformers 5 no longer returns hidden_states
        # from the bare encoder (MusicFM's own code breaks there), transformers 4 does
        inputs = []
        hooks = [
            layer.register_forward_pre_hook(
                lambda mod, args, kw: inputs.append(args[0] if args else kw["hidden_states"]),
                with_kwargs=True,
            )
            for layer in self.conformer.layers
        ]
        try:
            out = self.conformer(x, output_hidden_states=True)
        finally:
            for h in hooks:
                h.remove()
        last = out["last_hidden_state"]
        hidden = out.get("hidden_states") if hasattr(out, "get") else None
        if hidden is None:
            hidden = (*inputs, last)
        logits = self.linear(last)
        return {"melspec_2048": logits}, tuple(hidden)

    @torch.no_grad()
    def normalize(self, x):
        return {k: (v - self.stat[f"{k}_mean"]) / self.stat[f"{k}_std"] for k, v in x.items()}

    @torch.no_grad()
    def rearrange(self, x):
        out = {}
        for k, v in x.items():
            b, f, t = v.shape
            out[k] = v.view(b, f, t // 4, 4).permute(0, 2, 3, 1).reshape(b, t // 4, 4 * f)
        return out

    @torch.no_grad()
    def tokenize(self, x):
        return {k: getattr(self, f"quantizer_{k}_0")(v) for k, v in x.items()}

    def get_targets(self, x):
        return self.tokenize(self.rearrange(self.normalize(self.preprocessing(x, self.features))))

    def get_predictions(self, x):
        x = self.normalize(self.preprocessing(x, ["melspec_2048"]))
        return self.encoder(x["melspec_2048"])

    def get_latent(self, x, layer_ix=12):
        return self.get_predictions(x)[1][layer_ix]

    def get_loss(self, logits, target_tokens, masked_indices):
        losses, accs = {}, {}
        for k in logits:
            lg = logits[k][tuple(masked_indices.t())]
            tk = target_tokens[k][tuple(masked_indices.t())]
            losses[k] = self.loss(lg, tk)
            accs[k] = (lg.argmax(-1) == tk).sum() / tk.numel()
        return losses, accs

    def forward(self, x):
        targets = self.get_targets(x)
        x, masked = self.masking(x)
        logits, hidden = self.get_predictions(x)
        losses, accs = self.get_loss(logits, targets, masked)
        return logits, hidden, losses, accs
