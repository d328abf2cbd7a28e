"""`muse-fast pretrain` for every recipe (one step, tiny models) and `muse-fast embed`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from train_helpers import tiny_overrides

from muse_fast.cli import main
from muse_fast.data import SyntheticMusic
from muse_fast.train import RECIPES, load_pretrained, resolve_checkpoint

sf = pytest.importorskip("soundfile")  # not installed on every machine (the GPU one)


def _argv(recipe, out, steps=1, extra=()):
    sets = [
        f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
        for k, v in tiny_overrides(out, batch_size=2)
    ]
    argv = ["pretrain", "--recipe", recipe, "--steps", str(steps)]
    for s in sets:
        argv += ["--set", s]
    return argv + list(extra)


_CASES = {r: (r, ()) for r in RECIPES}
_CASES["muselq-attention"] = ("muselq-branchformer", ("--mixer", "attention"))
_CASES["myna-sogclr"] = ("myna-hybrid", ("--set", "model.loss=sogclr"))
_CASES["myna-bf16"] = ("myna-hybrid", ("--precision", "bf16"))


@pytest.mark.parametrize("recipe, extra", list(_CASES.values()), ids=list(_CASES))
def test_every_recipe_pretrains_and_embeds(recipe, extra, tmp_path, one_thread, capsys):
    out = tmp_path / "run"
    assert main(_argv(recipe, out, extra=extra)) == 0
    err = capsys.readouterr().err
    assert f"recipe {recipe}" in err and "samples/s" in err and "done: step 1" in err
    model, info = load_pretrained(out)
    assert info["recipe"] == recipe and info["step"] == 1
    if "sogclr" in extra:
        assert info["config"].model["dataset_size"] == 16
    audio = torch.from_numpy(
        SyntheticMusic(1, 2.5 * model.segment_samples / model.sample_rate, model.sample_rate).track(
            0
        )
    )
    with torch.no_grad():
        e = model.embed(audio[None, : model.segment_samples])
    assert e.ndim == 2 and e.shape[0] == 1 and torch.isfinite(e).all()


def test_embed_command(tmp_path, one_thread, capsys):
    out = tmp_path / "run"
    assert main(_argv("myna-hybrid", out, steps=2)) == 0
    ds = SyntheticMusic(2, 7.0, 22050, seed=9)
    files = []
    for i in range(2):
        files.append(str(tmp_path / f"t{i}.wav"))
        sf.write(files[-1], ds.track(i), 22050)  # resampled to 16 kHz by the command
    short = str(tmp_path / "short.flac")
    sf.write(short, ds.track(0)[:5000], 22050)  # shorter than one crop: zero-padded
    capsys.readouterr()
    assert (
        main(
            [
                "embed",
                "--checkpoint",
                str(out),
                *files,
                short,
                "--out",
                str(tmp_path / "e.npy"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "(3, " in capsys.readouterr().out
    emb = np.load(tmp_path / "e.npy")
    model, info = load_pretrained(out)
    assert emb.shape == (3, model.embed_dim) and np.isfinite(emb).all()
    assert not np.allclose(emb[0], emb[1])
    # the command's vector = the mean of model.embed over the file's consecutive crops
    from muse_fast.data import load_audio

    x = load_audio(files[1], 16000)
    seg = model.segment_samples
    n = x.numel() // seg
    with torch.no_grad():
        ref = model.embed(x[: n * seg].reshape(n, seg)).mean(0)
    np.testing.assert_allclose(emb[1], ref.numpy(), rtol=1e-4, atol=1e-5)
    # safetensors output with metadata; a checkpoint folder / weights file also work
    ckpt = resolve_checkpoint(out)
    assert (
        main(
            [
                "embed",
                "--checkpoint",
                str(ckpt / "model.safetensors"),
                files[0],
                "--out",
                str(tmp_path / "e.safetensors"),
                "--layer",
                "0",
            ]
        )
        == 0
    )
    from safetensors import safe_open

    with safe_open(str(tmp_path / "e.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["files"]) == [files[0]] and f.metadata()["step"] == "2"
        assert f.get_tensor("embeddings").shape == (1, model.embed_dim)
    # errors are messages, not tracebacks
    capsys.readouterr()
    assert main(["embed", "--checkpoint", str(tmp_path / "nothing"), files[0]]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert (
        main(["embed", "--checkpoint", str(out), files[0], "--out", str(tmp_path / "e.csv")]) == 2
    )


def test_pretrain_empty_data_folder_message(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    argv = _argv("myna-hybrid", tmp_path / "run") + ["--data", str(tmp_path / "d")]
    assert main(argv) == 2
    assert "no usable audio" in capsys.readouterr().err


def test_resume_from_the_command_line_reuses_the_run_config(tmp_path, one_thread, capsys):
    out = tmp_path / "run"
    assert main(_argv("myna-hybrid", out, steps=2)) == 0
    # no --set model.size=tiny, no batch size: the run's own config is the base
    assert (
        main(["pretrain", "--recipe", "myna-hybrid", "--out", str(out), "--resume", "--steps", "3"])
        == 0
    )
    err = capsys.readouterr().err
    assert "steps 2 -> 3 (resumed from" in err and "batch 2/device" in err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == {"size": "tiny"} and cfg["steps"] == 3
    assert main(["pretrain", "--recipe", "vit1d", "--out", str(out), "--resume"]) == 2
    assert "is recipe 'myna-hybrid'" in capsys.readouterr().err
