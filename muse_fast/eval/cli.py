"""``muse-fast probe``: frozen-embedding probes with mir_eval / sklearn metrics and baselines.

Examples::

    muse-fast probe --task synthetic-key --checkpoint runs/muse            # a pre-training run
    muse-fast probe --task gtzan --data ~/data/gtzan --checkpoint runs/muse --layer 1
    muse-fast probe --task synthetic-beat --model myna-hybrid --size tiny  # random init only
    muse-fast probe --task magnatagatune --data ~/mtat --checkpoint ckpt --out mtat.json

Every run prints the encoder's rows beside two baselines: the same architecture randomly
initialised (as the pre-training run started) and hand-crafted features (chroma for key / chord,
onset strength for beat, MFCC for genre / tagging). ``--checkpoint`` may also name a model
(``--checkpoint myna-hybrid --size tiny``): then the encoder is itself random-init and only the
hand-crafted baseline is added.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .. import cli as _cli

HELP = "probe frozen embeddings on a task (key, beat, chord, genre, tagging) with baselines"


def _layer(text: str) -> int | str | None:
    if text in ("none", "None", "default"):
        return None
    if text == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a block index (int), 'all' or 'default', got {text!r}"
        ) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .datasets import TASKS

    p.description = __doc__.split("\n\n")[0]
    p.epilog = "tasks: " + "; ".join(f"{k}: {v[0]}" for k, v in TASKS.items())
    p.add_argument("--task", required=True, help=f"task name ({', '.join(TASKS)})")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="run folder, checkpoint folder or its model.safetensors; or a model name (random init)",
    )
    p.add_argument(
        "--model", default=None, help="a model name for a random-init encoder (see --size)"
    )
    p.add_argument("--size", default=None, help="model size preset for --model (e.g. tiny)")
    p.add_argument(
        "--data", default=None, help="dataset folder (GiantSteps / GTZAN / MTAT layouts)"
    )
    p.add_argument(
        "--layer",
        type=_layer,
        default=None,
        help="block index to embed from, or 'all' (rows per block); default: the model's embedding",
    )
    p.add_argument(
        "--probe",
        choices=("linear", "mlp", "both"),
        default="both",
        help="probe kind(s) (default both)",
    )
    p.add_argument(
        "--baselines",
        default="random,handcrafted",
        help="comma list of random, handcrafted, or none (default both)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="probe seed (and init seed of a random-init --model)"
    )
    p.add_argument(
        "--lr", type=float, nargs="+", default=None, help="learning-rate grid (default 1e-3 1e-2)"
    )
    p.add_argument(
        "--weight-decay",
        type=float,
        nargs="+",
        default=None,
        help="weight-decay grid (default 0 1e-3)",
    )
    p.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        help="probe epochs cap (default 300 global, 40 frame-level)",
    )
    p.add_argument(
        "--device", default=None, help="device for the encoder (default: cuda if available)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="chunks per encoder forward")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="embedding cache (default $MUSE_FAST_CACHE/embeddings or ~/.cache/muse_fast/embeddings)",
    )
    p.add_argument(
        "--no-cache", action="store_true", help="do not read or write the embedding cache"
    )
    p.add_argument(
        "--n-tracks", type=int, default=None, help="synthetic tasks: number of tracks (default 200)"
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="synthetic tasks: seconds per track (default 10)",
    )
    p.add_argument(
        "--data-seed",
        type=int,
        default=None,
        help="synthetic tasks: corpus seed (default 10000); folders: split seed (default 0)",
    )
    p.add_argument(
        "--top-n", type=int, default=None, help="magnatagatune: the most frequent tags kept (50)"
    )
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--quiet", action="store_true", help="only the table")


class _UsageError(ValueError):
    """A bad command line: printed as ``muse-fast probe: <message>``, exit status 2."""


def _baselines(args: argparse.Namespace) -> set[str]:
    baselines = {b.strip() for b in args.baselines.split(",") if b.strip()} - {"none"}
    bad = baselines - {"random", "handcrafted"}
    if bad:
        raise _UsageError(f"--baselines: unknown {sorted(bad)} (random, handcrafted, none)")
    return baselines


def _load(args: argparse.Namespace):
    """(task, model, spec, device) named by the command line."""
    import torch

    from .datasets import get_task
    from .encoders import load_encoder

    synthetic = args.task.startswith("synthetic-")
    task = get_task(
        args.task,
        args.data,
        n_tracks=args.n_tracks,
        duration_s=args.duration,
        seed=args.data_seed if synthetic else None,
        split_seed=None if synthetic else args.data_seed,
        top_n=args.top_n,
    )
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    overrides = {"size": args.size} if args.size else {}
    model, spec = load_encoder(
        args.checkpoint, model=args.model, device=device, seed=args.seed, **overrides
    )
    return task, model, spec, device


def _layers(args: argparse.Namespace, model) -> list[tuple[int | None, str]]:
    if args.layer != "all":
        return [(args.layer, "" if args.layer is None else f"@L{args.layer}")]
    depth = getattr(getattr(model, "config", None), "depth", None)
    if not isinstance(depth, int):
        raise _UsageError("--layer all: the model's config has no 'depth'")
    return [(k, f"@L{k}") for k in range(depth)]


def _extractors(args, task, model, spec, device, baselines: set[str]) -> list:
    """One feature extractor per (encoder, layer), plus the hand-crafted baseline."""
    from .encoders import random_init_like
    from .features import EncoderFeatures, HandcraftedFeatures

    main_name = "pretrained" if spec.kind == "checkpoint" else "random-init"
    encoders = [(main_name, model)]
    if "random" in baselines and spec.kind == "checkpoint":
        encoders.append(("random-init", random_init_like(spec, device)[0]))
    extractors = [
        EncoderFeatures(m, name=name + tag, layer=k, batch_size=args.batch_size)
        for k, tag in _layers(args, model)
        for name, m in encoders
    ]
    if "handcrafted" in baselines:
        extractors.append(HandcraftedFeatures(task.handcrafted))
    return extractors


def _probe_options(args: argparse.Namespace, task) -> dict:
    """Keyword arguments of ``probe_task`` that the command line sets."""
    from .features import default_cache_dir
    from .probes import ProbeSettings
    from .run import default_settings

    settings = default_settings(task)
    if args.max_epochs:
        settings = {
            k: ProbeSettings(**{**v.__dict__, "max_epochs": args.max_epochs})
            for k, v in settings.items()
        }
    grid = {}
    if args.lr:
        grid["lr"] = tuple(args.lr)
    if args.weight_decay:
        grid["weight_decay"] = tuple(args.weight_decay)
    return dict(
        probes=("linear", "mlp") if args.probe == "both" else (args.probe,),
        settings=settings,
        grid=grid or None,
        seed=args.seed,
        cache_dir=None if args.no_cache else (args.cache_dir or str(default_cache_dir())),
    )


def run(args: argparse.Namespace) -> int:
    from .run import format_table, probe_task

    say = (lambda *a: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    try:
        if args.checkpoint is None and args.model is None:
            raise _UsageError("give --checkpoint (a run / checkpoint) or --model (random init)")
        baselines = _baselines(args)
        task, model, spec, device = _load(args)
        say(f"task {task!r}: {task.description}")
        say(f"encoder: {spec.describe()} on {device}")
        extractors = _extractors(args, task, model, spec, device, baselines)
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"muse-fast probe: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    progress = not args.quiet and sys.stderr.isatty()
    result = probe_task(task, extractors, progress=progress, log=say, **_probe_options(args, task))
    result["encoder"] = {**spec.__dict__, "description": spec.describe(), "layer": args.layer}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(format_table(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2, default=str)
        say(f"results written to {args.out}")
    return 0


_cli.COMMANDS["probe"] = (HELP, add_arguments, run)
# `python -m muse_fast.cli` runs the CLI module as __main__, a second copy whose COMMANDS is not
# the one imported above: register there too.
_main = sys.modules.get("__main__")
if getattr(getattr(_main, "__spec__", None), "name", None) == "muse_fast.cli" and isinstance(
    getattr(_main, "COMMANDS", None), dict
):
    _main.COMMANDS["probe"] = (HELP, add_arguments, run)
