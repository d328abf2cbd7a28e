"""Render the latest benchmark results as markdown: ``python benchmarks/render.py [DIR]``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from muse_fast.benchmark import RESULTS_DIR, render_markdown


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else RESULTS_DIR
    files = sorted(root.glob("*/*.json"))
    if not files:
        print(
            f"no results under {root}; run `pytest benchmarks/ --benchmark` first", file=sys.stderr
        )
        return 1
    for f in files:
        print(f"## {f.parent.name} / {f.stem}\n")
        print(render_markdown(json.loads(f.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
