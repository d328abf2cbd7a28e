"""``muse-fast pretrain`` and ``muse-fast embed`` (registered in ``muse_fast.cli.COMMANDS``)."""

from __future__ import annotations

import argparse
import json
import sys

from ..cli import COMMANDS
from .config import RECIPES, make_config, parse_set, to_dict

_MIXER_RECIPES = ("muselq-branchformer", "bestrq-conformer")

PRETRAIN_EPILOG = """\
examples:
  muse-fast pretrain --recipe myna-hybrid --set model.size=tiny --steps 300 --batch-size 16 --out runs/demo
  muse-fast pretrain --recipe muselq-branchformer --mixer summary_mixing --data /data/audio --out runs/mlq
  muse-fast pretrain --recipe myna-hybrid --out runs/demo --resume        # continue the latest checkpoint
  torchrun --nproc_per_node 8 -m muse_fast.cli pretrain --recipe myna-hybrid --data /data/audio

Any TrainConfig field can be set with --set KEY=VALUE (repeatable; dotted keys for data.* and
model.*, e.g. --set lr=1e-4 --set model.size=tiny --set data.synthetic_tracks=512) or from
--config FILE (.json or .toml, same nesting). Without --data the synthetic corpus is used (rendered
once into a prepared corpus under $MUSE_FAST_CACHE, default ~/.cache/muse_fast).
recipes: """ + ", ".join(RECIPES)


def _add_pretrain_args(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = PRETRAIN_EPILOG
    p.add_argument("--recipe", required=True, choices=list(RECIPES), help="what to pre-train")
    p.add_argument(
        "--data",
        default=None,
        help="prepared corpus (muse-fast prepare) or folder of audio (default: synthetic corpus)",
    )
    p.add_argument("--steps", type=int, default=None, help="total optimizer steps")
    p.add_argument("--batch-size", type=int, default=None, help="batch size per process")
    p.add_argument("--out", default=None, help="run folder (checkpoints, logs); default runs/muse")
    p.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in --out"
    )
    p.add_argument("--config", default=None, help="JSON or TOML file of config overrides")
    p.add_argument(
        "--mixer",
        choices=["attention", "summary_mixing"],
        default=None,
        help=f"token mixer of {' / '.join(_MIXER_RECIPES)} (sets model.mixer)",
    )
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="auto (default) | cpu | cuda | cuda:N")
    p.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default=None)
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers per process")
    p.add_argument("--log-every", type=int, default=None)
    p.add_argument("--ckpt-every", type=int, default=None)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--print-config", action="store_true", help="print the resolved config as JSON and exit"
    )


def _error(cmd: str, e: Exception) -> int:
    print(f"muse-fast {cmd}: error: {e}", file=sys.stderr)
    return 2


def build_config(args: argparse.Namespace):
    overrides: list[tuple[str, object]] = []
    flags = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "out": args.out,
        "lr": args.lr,
        "seed": args.seed,
        "device": args.device,
        "precision": args.precision,
        "num_workers": args.num_workers,
        "log_every": args.log_every,
        "ckpt_every": args.ckpt_every,
        "data.root": args.data,
    }
    overrides += [(k, v) for k, v in flags.items() if v is not None]
    if args.mixer is not None:
        if args.recipe not in _MIXER_RECIPES:
            raise ValueError(f"--mixer applies to {', '.join(_MIXER_RECIPES)}, not {args.recipe}")
        overrides.append(("model.mixer", args.mixer))
    if args.no_progress:
        overrides.append(("progress", False))
    overrides += [parse_set(s) for s in args.overrides]
    base = None
    if args.resume:  # continue the run as it was configured (the command line still applies)
        from .checkpoint import latest_checkpoint, load_config
        from .config import TrainConfig, from_dict

        out = next((v for k, v in reversed(overrides) if k == "out"), TrainConfig.out)
        latest = latest_checkpoint(str(out))
        if latest is not None:
            base = from_dict(load_config(latest))
            base.out = str(out)
    return make_config(args.recipe, config_file=args.config, overrides=overrides, base=base)


def run_pretrain(args: argparse.Namespace) -> int:
    try:
        cfg = build_config(args)
    except (ValueError, OSError) as e:
        return _error("pretrain", e)
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    from .loop import train

    try:
        train(cfg, resume=args.resume)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        return _error("pretrain", e)
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        return 130
    return 0


def _add_embed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        required=True,
        help="run folder (latest checkpoint), checkpoint folder or model.safetensors",
    )
    p.add_argument("audio", nargs="+", help="audio files (wav / flac / ogg / mp3)")
    p.add_argument("--out", default="embeddings.npy", help="FILE.npy or FILE.safetensors")
    p.add_argument(
        "--layer", type=int, default=None, help="block index (default: model's embedding)"
    )
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--batch-size", type=int, default=16, help="crops per forward pass")


def run_embed(args: argparse.Namespace) -> int:
    import torch

    from .embed import embed_files, load_pretrained, save_embeddings

    if not (args.out.endswith(".npy") or args.out.endswith(".safetensors")):
        return _error(
            "embed", ValueError(f"--out must end in .npy or .safetensors, got {args.out!r}")
        )
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model, info = load_pretrained(args.checkpoint, device)
        emb = embed_files(
            model,
            args.audio,
            layer=args.layer,
            batch_size=args.batch_size,
            progress=sys.stderr.isatty(),
        )
        save_embeddings(args.out, emb, args.audio, info)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        return _error("embed", e)
    print(
        f"{args.out}: {tuple(emb.shape)} embeddings ({info['recipe']}, step {info['step']}, "
        f"{info['checkpoint']})"
    )
    return 0


_ENTRIES = {
    "pretrain": ("pre-train a recipe (see --help for recipes)", _add_pretrain_args, run_pretrain),
    "embed": ("embed audio files with a pre-trained checkpoint", _add_embed_args, run_embed),
}
COMMANDS.update(_ENTRIES)
# `python -m muse_fast.cli` (what `torchrun -m muse_fast.cli` runs) executes the CLI module as
# __main__, a second copy whose COMMANDS is not the one imported above: register there too.
_main = sys.modules.get("__main__")
if getattr(getattr(_main, "__spec__", None), "name", None) == "muse_fast.cli" and isinstance(
    getattr(_main, "COMMANDS", None), dict
):
    _main.COMMANDS.update(_ENTRIES)
