"""The ``muse-fast`` command: ``--version``, ``info`` (and, as they land, ``pretrain``, ``embed``,
``probe``, ``bench``)."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable

import torch

from . import __version__

# Subcommands other modules add: name -> (help, add_arguments(parser), run(args) -> int)
COMMANDS: dict[
    str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {}


def _example_inputs(device: torch.device) -> dict[str, tuple[tuple, dict]]:
    """Small typical inputs per op, for reporting which backends take them."""
    from .ops import registered_ops

    examples: dict[str, tuple[tuple, dict]] = {}
    for name, op in registered_ops().items():
        make = op.example_inputs or getattr(op.reference, "example_inputs", None)
        if make is not None:
            examples[name] = make(device)
    return examples


def _cuda_of_tag(version: str) -> str | None:
    """CUDA version in a wheel's local tag: ``'2.11.1+cu132'`` -> ``'13.2'``; None without one."""
    m = re.search(r"\+cu(\d+)(\d)$", version)
    return f"{int(m.group(1))}.{m.group(2)}" if m else None


def _torchaudio_cuda(version: str) -> str | None:
    """The CUDA toolkit torchaudio's extension was compiled with (its ``CUDA_VERSION`` macro,
    1000 * major + 10 * minor), else the wheel's ``+cuXYZ`` tag; None for a CPU build."""
    try:
        code = torch.ops._torchaudio.cuda_version()
    except Exception:  # extension absent or not loaded: the tag is all we have
        return _cuda_of_tag(version)
    if code is None:
        return None
    major, minor = divmod(int(code) // 10, 100)
    return f"{major}.{minor}"


def cuda_build_mismatch(
    torch_version: str, torch_cuda: str | None, ta_version: str, ta_cuda: str | None
) -> str | None:
    """A warning when torch and torchaudio were compiled for different CUDA versions
    (major.minor; a CPU-only build counts as its own kind), else None."""

    def mm(v: str | None) -> str | None:
        return ".".join(v.split(".")[:2]) if v else None

    if mm(torch_cuda) == mm(ta_cuda):
        return None

    def built(v: str | None) -> str:
        return f"CUDA {mm(v)}" if v else "CPU only"

    return (
        f"WARNING: torch {torch_version} is built for {built(torch_cuda)} but torchaudio "
        f"{ta_version} for {built(ta_cuda)}; install the torchaudio build that matches torch "
        "(same +cuXYZ tag; CI's known-good pair is in .ci/known-good.txt)"
    )


def cmd_info(args: argparse.Namespace) -> int:
    import platform

    from ._backend import (
        extension_import_error,
        forced_backend,
        triton_import_error,
        triton_interpret,
    )
    from .benchmark import device_name

    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        import triton

        tv = triton.__version__
    except Exception:
        tv = "not installed"
    try:
        import torchaudio

        tav = torchaudio.__version__
        mismatch = cuda_build_mismatch(
            torch.__version__,
            torch.version.cuda or _cuda_of_tag(torch.__version__),
            tav,
            _torchaudio_cuda(tav),
        )
    except Exception:
        tav, mismatch = "not installed", None
    print(f"muse_fast {__version__}")
    print(
        f"python {platform.python_version()} · torch {torch.__version__} · torchaudio {tav} · triton {tv}"
    )
    if mismatch:
        print(mismatch)
    print(f"device: {dev} ({device_name(dev)})")
    ext_err = extension_import_error()
    if ext_err is None:
        from . import _C

        print(f"C++ extension: built (OpenMP: {_C.has_openmp}, {_C.max_threads()} threads)")
    else:
        print(f"C++ extension: {ext_err}")
    print(f"triton: {triton_import_error() or 'importable'}; interpreter: {triton_interpret()}")
    print(f"forced backend: {forced_backend() or 'none (auto)'}")
    print()
    examples = _example_inputs(dev)
    from .ops import registered_ops

    rows = []
    for name, op in sorted(registered_ops().items()):
        if name not in examples:
            # no example inputs (e.g. a backward op): report which kernels exist, unchecked
            avail = {
                b: None if op.impl(b) is not None else f"no {b} kernel"
                for b in ("triton", "cpu", "reference")
            }
            rows.append((name, "-", avail))
            continue
        a, kw = examples[name]
        avail = op.availability(*a, **kw)
        try:
            chosen = op.select(*a, **kw)[0]
        except Exception as e:  # a forced backend that refuses
            chosen = f"error: {e}"
        rows.append((name, chosen, avail))
    width = max((len(r[0]) for r in rows), default=10)
    print(f"{'op':<{width}}  runs on   backends for typical inputs on {dev} (usable, or why not)")
    for name, chosen, avail in rows:
        parts = [f"{b}: {'yes' if why is None else 'no — ' + why}" for b, why in avail.items()]
        print(f"{name:<{width}}  {chosen:<9} " + " | ".join(parts))
    print(
        "(ops shown with '-' have no example inputs; their kernels are listed without input checks)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="muse-fast", description=__doc__)
    p.add_argument("--version", action="version", version=f"muse_fast {__version__}")
    sub = p.add_subparsers(dest="command")
    info = sub.add_parser("info", help="versions, device, and the backends each op can use here")
    info.add_argument(
        "--device", default=None, help="device to report for (default: cuda if available)"
    )
    info.set_defaults(func=cmd_info)
    _load_commands()
    for name, (help_, add_args, run) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_)
        add_args(sp)
        sp.set_defaults(func=run)
    return p


def _load_commands() -> None:
    """Import the modules that register subcommands (each is optional until its issue lands)."""
    import importlib

    for mod in (
        "muse_fast.train.cli",
        "muse_fast.data.cli",
        "muse_fast.eval.cli",
        "muse_fast.bench_cli",
    ):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
