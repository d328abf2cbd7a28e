"""``muse-fast prepare`` (registered in ``muse_fast.cli.COMMANDS``)."""

from __future__ import annotations

import argparse
import sys

from ..cli import COMMANDS

PREPARE_EPILOG = """\
examples:
  muse-fast prepare --data /data/audio --out /data/corpus-16k --workers 8
  muse-fast prepare --data /data/audio --out /data/corpus-24k --recipe bestrq-conformer
  # on K machines (a SLURM array, torchrun, ...), then once:
  muse-fast prepare --data /data/audio --out /data/corpus --num-shards K --shard-index $i
  muse-fast prepare --out /data/corpus --merge
  muse-fast pretrain --recipe myna-hybrid --data /data/corpus-16k --out runs/myna

Running the same command again continues an interrupted run (same bytes as an uninterrupted
one) or adds the files that are new since the last run."""


def _add_prepare_args(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = PREPARE_EPILOG
    p.add_argument(
        "--data", default=None, help="folder of audio (wav / flac / ogg / mp3, recursive)"
    )
    p.add_argument("--out", required=True, help="corpus folder to write (or continue)")
    p.add_argument(
        "--sample-rate", type=int, default=None, help="target rate (default: --recipe's)"
    )
    p.add_argument(
        "--recipe", default="myna-hybrid", help="recipe whose rate and crop length to use"
    )
    p.add_argument("--min-duration", type=float, default=None,
                   help="skip shorter files, seconds (default: one crop of --recipe)")  # fmt: skip
    p.add_argument(
        "--silence-threshold", type=float, default=1e-4, help="peak below which a file is silent"
    )
    p.add_argument("--workers", type=int, default=0, help="decoder processes (0: this one)")
    p.add_argument("--num-shards", type=int, default=1, help="split the work into K jobs")
    p.add_argument("--shard-index", type=int, default=0, help="which of the K jobs this is")
    p.add_argument("--shard-size-mb", type=float, default=1024, help="bytes per shard file (MiB)")
    p.add_argument("--merge", action="store_true", help="merge OUT/part-i-of-K into one manifest")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _recipe_geometry(recipe: str) -> tuple[int, int]:
    from ..train.config import RECIPES, recipe_geometry

    if recipe not in RECIPES:
        raise ValueError(f"--recipe: unknown recipe {recipe!r}; choose from: {', '.join(RECIPES)}")
    return recipe_geometry(recipe, {})[:2]


def run_prepare(args: argparse.Namespace) -> int:
    from .corpus_format import CorpusError
    from .prepare import merge_parts, prepare_folder
    from .prepared import PreparedCorpus

    try:
        if args.merge:
            folder = merge_parts(args.out)
        else:
            if not args.data:
                raise ValueError("--data is required (or --merge)")
            sr, seg = _recipe_geometry(args.recipe)
            sr = args.sample_rate or sr
            min_s = args.min_duration if args.min_duration is not None else seg / sr
            folder = prepare_folder(
                args.data, args.out, sr, workers=args.workers, min_samples=int(round(min_s * sr)),
                silence_threshold=args.silence_threshold, num_shards=args.num_shards,
                shard_index=args.shard_index, shard_bytes=int(args.shard_size_mb * 2**20),
                progress=not args.no_progress and sys.stderr.isatty(),
            )  # fmt: skip
        corpus = PreparedCorpus(folder)
    except (ValueError, CorpusError, OSError) as e:
        print(f"muse-fast prepare: error: {e}", file=sys.stderr)
        return 2
    print(f"{corpus!r}; skipped: {corpus.skip_summary()}")
    return 0


_ENTRIES = {
    "prepare": (
        "decode a folder of audio once into a prepared corpus",
        _add_prepare_args,
        run_prepare,
    )
}
COMMANDS.update(_ENTRIES)
# `python -m muse_fast.cli` runs the CLI module as __main__, a second copy: register there too.
_main = sys.modules.get("__main__")
if getattr(getattr(_main, "__spec__", None), "name", None) == "muse_fast.cli" and isinstance(
    getattr(_main, "COMMANDS", None), dict
):
    _main.COMMANDS.update(_ENTRIES)
