"""Configs: recipe defaults, files (JSON / TOML), flags and --set overrides, error messages."""

from __future__ import annotations

import json

import pytest

from muse_fast.cli import main
from muse_fast.train import RECIPES, TrainConfig, make_config
from muse_fast.train.config import apply_overrides, from_dict, parse_set, to_dict


def _print_config(capsys, *argv) -> dict:
    assert main(["pretrain", *argv, "--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


def test_recipes_carry_the_papers_optimizers():
    assert set(RECIPES) == {
        "myna-base", "myna-vertical", "myna-hybrid", "vit1d", "bestrq-conformer", "muselq-branchformer",
    }  # fmt: skip
    myna = make_config("myna-hybrid")
    assert (myna.optimizer, myna.lr, myna.weight_decay) == ("adam", 3e-4, 1e-5)
    mlq = make_config("muselq-branchformer")
    assert (mlq.optimizer, mlq.lr, mlq.min_lr, mlq.grad_clip, mlq.schedule) == (
        "adamw",
        1e-4,
        1e-5,
        1.0,
        "cosine",
    )
    assert mlq.precision == "auto"  # bf16 on CUDA
    import muse_fast.models as M

    assert {r.model for r in RECIPES.values()} <= set(M.list_models())


def test_layers_file_flags_and_set(tmp_path, capsys):
    js = tmp_path / "run.json"
    js.write_text(
        json.dumps(
            {"lr": 1e-3, "steps": 50, "model": {"size": "tiny"}, "data": {"synthetic_tracks": 64}}
        )
    )
    cfg = _print_config(capsys, "--recipe", "vit1d", "--config", str(js), "--steps", "70", "--set", "steps=90",
                        "--set", "model.depth=3", "--set", "betas=[0.8,0.9]", "--set", "warmup_steps=null",
                        "--data", "/some/folder", "--batch-size", "8", "--set", "grad_clip=0")  # fmt: skip
    assert cfg["lr"] == 1e-3  # file over recipe
    assert cfg["steps"] == 90  # --set after the flag
    assert cfg["model"] == {"size": "tiny", "depth": 3}
    assert cfg["data"]["synthetic_tracks"] == 64 and cfg["data"]["root"] == "/some/folder"
    assert cfg["betas"] == [0.8, 0.9] and cfg["warmup_steps"] is None
    assert (
        cfg["batch_size"] == 8 and cfg["grad_clip"] == 0.0 and isinstance(cfg["grad_clip"], float)
    )
    toml = tmp_path / "run.toml"
    toml.write_text(
        'recipe = "muselq-branchformer"\nlr = 2e-4\nprecision = "bf16"\n[model]\nsize = "tiny"\n[data]\nextensions = [".wav"]\n'
    )
    cfg = _print_config(
        capsys, "--recipe", "muselq-branchformer", "--config", str(toml), "--mixer", "attention"
    )
    assert (
        cfg["lr"] == 2e-4 and cfg["precision"] == "bf16" and cfg["data"]["extensions"] == [".wav"]
    )
    assert cfg["model"] == {"size": "tiny", "mixer": "attention"}
    assert cfg["min_lr"] == 1e-5  # recipe default kept


def test_overrides_round_trip_and_coercion():
    cfg = make_config(
        "myna-base",
        overrides=[("steps", "12"), ("lr", 1), ("compile", "true"), ("num_workers", "3")],
    )
    assert cfg.steps == 12 and cfg.lr == 1.0 and cfg.compile is True and cfg.num_workers == 3
    assert from_dict(to_dict(cfg)) == cfg
    assert parse_set("model.size=tiny") == ("model.size", "tiny")
    assert parse_set("lr=1e-4") == ("lr", 1e-4)
    assert parse_set("name=a=b") == ("name", "a=b")
    c = apply_overrides(TrainConfig(), {"data": {"root": "x"}, "model": {"dim": 32}})
    assert c.data.root == "x" and c.model == {"dim": 32}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "nope=1"], "unknown config key 'nope'"),
        (["--set", "data.nope=1"], "unknown config key 'data.nope'"),
        (["--set", "steps=abc"], "steps"),
        (["--set", "steps=0"], "steps must be >= 1"),
        (["--set", "compile=maybe"], "compile"),
        (["--set", "optimizer=sgd"], "optimizer"),
        (["--set", "lr"], "key=value"),
        (["--mixer", "summary_mixing"], "--mixer applies to"),
        (["--config", "/no/such/file.json"], "No such file"),
    ],
)
def test_bad_settings_are_clear_errors(argv, message, capsys):
    assert main(["pretrain", "--recipe", "myna-hybrid", *argv, "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "muse-fast pretrain: error:" in err and message in err


def test_config_file_for_another_recipe(tmp_path, capsys):
    f = tmp_path / "c.json"
    f.write_text('{"recipe": "vit1d"}')
    assert main(["pretrain", "--recipe", "myna-hybrid", "--config", str(f), "--print-config"]) == 2
    assert "is for recipe 'vit1d'" in capsys.readouterr().err
    f.write_text("[1, 2]")
    assert main(["pretrain", "--recipe", "myna-hybrid", "--config", str(f), "--print-config"]) == 2
