"""CI's dependency bookkeeping (standard library only; runs in the CI venv).

  python .ci/deps.py resolve OUT.json        the newest versions pip resolves for the project's
                                             dependencies + the extras CI installs (a dry run,
                                             nothing installed), as pip's JSON report
  python .ci/deps.py compare KNOWN OTHER     differences between .ci/known-good.txt and a pip
                                             freeze or a pip report (printed; exit status 0)
  python .ci/deps.py record FREEZE KNOWN     write a passing venv's freeze as the known-good set

The known-good set is the versions CI last passed with; the comparison is a report, not a gate,
so a new upstream release shows up in the CI log before it can break a run.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = """\
# Known-good dependency set: the versions CI (.ci/run) last passed with, used as pip constraints
# for CI's venv. Regenerate after a passing CI run:  make known-good
# (= python .ci/deps.py record .ci-venv/passed-freeze.txt .ci/known-good.txt).
# torchaudio must be built for the same CUDA version as torch (muse-fast info warns otherwise).
"""


# Upgraded separately before the install; pinning them would fight that step.
BOOTSTRAP = {"pip", "setuptools", "wheel"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# The extras CI installs (.ci/run), and what it installs without dependencies on top.
CI_EXTRAS = ("dev", "integrations")
NO_DEPS = ("libauc",)  # its own requirements pull torch_geometric, ogb, opencv


def project_requirements() -> list[str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = meta.get("optional-dependencies", {})
    return list(meta["dependencies"]) + [r for e in CI_EXTRAS for r in extras.get(e, [])]


def read_versions(path: Path) -> dict[str, str]:
    """name -> version from a pip freeze / constraints file or a pip ``--report`` JSON."""
    text = path.read_text()
    if path.suffix == ".json":
        return {
            _norm(i["metadata"]["name"]): i["metadata"]["version"]
            for i in json.loads(text)["install"]
        }
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[_norm(name.split("[")[0])] = version.split(";")[0].strip()
    return out


def resolve(out: Path) -> int:
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q"]
    cmd += ["--report", str(out), *project_requirements()]
    code = subprocess.run(cmd, check=False).returncode
    if code == 0:  # add the --no-deps packages' newest versions to the same report
        extra = out.with_suffix(".nodeps.json")
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q"]
        cmd += ["--no-deps", "--report", str(extra), *NO_DEPS]
        if subprocess.run(cmd, check=False).returncode == 0:
            report = json.loads(out.read_text())
            report["install"] += json.loads(extra.read_text())["install"]
            out.write_text(json.dumps(report))
    return code


def compare(known_path: Path, other_path: Path, label: str) -> int:
    known, other = read_versions(known_path), read_versions(other_path)
    other = {n: v for n, v in other.items() if n not in BOOTSTRAP}
    changed = sorted(n for n in known.keys() & other.keys() if known[n] != other[n])
    added = sorted(other.keys() - known.keys())
    gone = sorted(known.keys() - other.keys())
    if not (changed or added or gone):
        print(f"{label}: same versions as {known_path.name} ({len(known)} packages)")
        return 0
    print(f"{label}: differs from {known_path.name} (report only):")
    for n in changed:
        print(f"  {n}: {known[n]} (known-good) -> {other[n]} ({label})")
    for n in added:
        print(f"  {n}: not in {known_path.name} -> {other[n]} ({label})")
    for n in gone:
        print(f"  {n}: {known[n]} (known-good) -> not installed ({label})")
    return 0


def record(freeze: Path, known: Path) -> int:
    lines = sorted(
        (
            ln
            for ln in freeze.read_text().splitlines()
            if "==" in ln and not ln.startswith("#") and _norm(ln.split("==")[0]) not in BOOTSTRAP
        ),
        key=str.lower,
    )
    known.write_text(HEADER + "\n".join(lines) + "\n")
    print(f"wrote {len(lines)} pins to {known}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("resolve").add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("known", type=Path)
    c.add_argument("other", type=Path)
    c.add_argument("--label", default="other")
    r = sub.add_parser("record")
    r.add_argument("freeze", type=Path)
    r.add_argument("known", type=Path)
    a = p.parse_args(argv)
    if a.cmd == "resolve":
        return resolve(a.out)
    if a.cmd == "compare":
        return compare(a.known, a.other, a.label)
    return record(a.freeze, a.known)


if __name__ == "__main__":
    sys.exit(main())
