"""Compile one recorded launch for sm_90 and read what the compiler produced.

The launch is specialized exactly as Triton's runtime would specialize it on a GPU (its own
binder: integer arguments equal to 1 become constexprs, pointers and integers divisible by 16
get the divisibility attribute), compiled with ``triton.compile`` for ``GPUTarget("cuda", 90,
32)`` and the launcher's ``num_warps`` / ``num_stages``; registers and local memory come from
``cuobjdump -res-usage`` on the cubin, instruction counts from ``nvdisasm``. Results are cached
on disk by the hash of the compile input (kernel source and its dependencies, signature,
constexprs, attributes, options, Triton version), so an unchanged kernel is never recompiled.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import triton

TARGET_ARCH = 90

# instruction classes counted per kernel and per innermost loop (SASS opcode prefixes)
CLASSES: dict[str, tuple[str, ...]] = {
    "mma": ("HGMMA", "HMMA", "IMMA"),
    "ffma": ("FFMA",),
    "fmul_fadd": ("FMUL", "FADD"),
    "ex2": ("MUFU.EX2",),
    "mufu": ("MUFU",),
    "ldg": ("LDG",),
    "stg": ("STG",),
    "ldgsts": ("LDGSTS",),
    "tma": ("UTMALDG", "UTMASTG"),
    "lds": ("LDS", "LDSM"),
    "sts": ("STS",),
    "shfl": ("SHFL",),
    "bar": ("BAR",),
    "atom": ("ATOM", "RED", "ATOMG"),
    "membar": ("MEMBAR",),
    "spill": ("STL", "LDL"),
    "cvt": ("F2F", "F2FP", "F2I", "I2F"),
}


@dataclass
class Loop:
    """One innermost loop of the SASS: its length and instruction classes per iteration."""

    length: int
    counts: dict[str, int]
    mma_flops: int  # flops of the MMA instructions of one iteration, per warp


@dataclass
class KernelInfo:
    name: str
    regs: int
    local_bytes: int
    stack_bytes: int
    spill_instructions: int
    smem_bytes: int
    num_warps: int
    num_stages: int
    instructions: int
    counts: dict[str, int]
    tensor_core: str | None  # e.g. "wgmma bf16", "mma.sync tf32", or None
    mma_flops_per_warp: dict[str, int]  # static flops of MMAs in the whole kernel
    loops: list[Loop] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KernelInfo:
        d = dict(d)
        d["loops"] = [Loop(**lp) for lp in d.get("loops", [])]
        return cls(**d)


def _tool(name: str) -> str:
    base = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if base.exists():
        return str(base)
    return name  # on PATH (a CUDA toolkit)


def cache_dir() -> Path:
    root = os.environ.get("MUSE_FAST_STATIC_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "muse_fast", "static-sm90"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def specialize(launch: Any) -> tuple[Any, dict, dict, dict, dict]:
    """(JITFunction, signature, constexprs, attrs, options) as Triton's runtime binder builds
    them for this launch on a GPU."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    k = launch.kernel
    backend = make_backend(GPUTarget("cuda", TARGET_ARCH, 32))
    binder = create_function_from_signature(k.signature, k.params, backend)
    kwargs = dict(launch.constexprs, num_warps=launch.num_warps, num_stages=launch.num_stages)
    bound, spec, opts = binder(*launch.args, **kwargs)
    _, signature, constexprs, attrs = k._pack_args(backend, kwargs, bound, spec, opts)
    options = {"num_warps": launch.num_warps, "num_stages": launch.num_stages}
    return k, signature, constexprs, attrs, options


def _mma_flops(op: str) -> tuple[str, int]:
    """(precision, flops per warp) of one MMA instruction (an HGMMA is issued by each of the 4
    warps of a warpgroup and computes one m x n x k product for all of them)."""
    parts = op.split(".")
    prec = parts[-1].lower()
    if op.startswith("HGMMA"):
        m, n, k = (int(v) for v in parts[1].split("x"))
        return f"wgmma {prec}", 2 * m * n * k // 4
    if op.startswith(("HMMA", "IMMA")):
        shape = parts[1]  # e.g. 16816 -> m16 n8 k16, 1688 -> m16 n8 k8
        m, n, k = int(shape[:2]), int(shape[2]), int(shape[3:])
        return f"mma.sync {prec}", 2 * m * n * k
    return "", 0


_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Za-z0-9_.]*)(.*?);")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_BRA = re.compile(r"BRA\s+`\((\.L_x_\d+)\)")


def _classify(op: str) -> list[str]:
    out = []
    for cls, prefixes in CLASSES.items():
        if any(op == p or op.startswith(p + ".") for p in prefixes):
            out.append(cls)
    return out


def parse_sass(text: str) -> tuple[list[tuple[int, str, str]], dict[str, int]]:
    """Instructions ``(index, opcode, operands)`` and label -> instruction index."""
    instrs: list[tuple[int, str, str]] = []
    labels: dict[str, int] = {}
    for raw in text.splitlines():
        line = raw.strip()
        m = _LABEL.match(line)
        if m:
            labels[m.group(1)] = len(instrs)
            continue
        m = _LINE.search(line)
        if m and m.group(2) not in ("NOP",):
            instrs.append((len(instrs), m.group(2), m.group(3)))
    return instrs, labels


def _count(instrs: list[tuple[int, str, str]]) -> dict[str, int]:
    counts = dict.fromkeys(CLASSES, 0)
    for _, op, _ in instrs:
        for cls in _classify(op):
            counts[cls] += 1
    return counts


def innermost_loops(instrs: list[tuple[int, str, str]], labels: dict[str, int]) -> list[Loop]:
    """Loops are backward branches to a label; innermost = containing no other loop."""
    spans = []
    for i, op, rest in instrs:
        if op.startswith("BRA"):
            m = _BRA.search(op + rest)
            if m and m.group(1) in labels and labels[m.group(1)] <= i:
                spans.append((labels[m.group(1)], i))
    inner = [s for s in spans if not any(o != s and s[0] <= o[0] and o[1] <= s[1] for o in spans)]
    loops = []
    for a, b in inner:
        body = instrs[a : b + 1]
        flops = sum(_mma_flops(op)[1] for _, op, _ in body)
        loops.append(Loop(length=len(body), counts=_count(body), mma_flops=flops))
    return loops


def _analyse(name: str, cubin: bytes, shared: int, options: dict) -> KernelInfo:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        res = subprocess.run(
            [_tool("cuobjdump"), "-res-usage", path], capture_output=True, text=True, check=True
        ).stdout
        sass = subprocess.run(
            [_tool("nvdisasm"), "-c", path], capture_output=True, text=True, check=True
        ).stdout
    regs = int(re.search(r"REG:(\d+)", res).group(1))
    local = int(re.search(r"LOCAL:(\d+)", res).group(1))
    instrs, labels = parse_sass(sass)
    counts = _count(instrs)
    precisions: dict[str, int] = {}
    for _, op, _ in instrs:
        prec, flops = _mma_flops(op)
        if flops:
            precisions[prec] = precisions.get(prec, 0) + flops
    tensor_core = max(precisions, key=precisions.get) if precisions else None
    return KernelInfo(
        name=name,
        regs=regs,
        local_bytes=local,
        stack_bytes=int(re.search(r"STACK:(\d+)", res).group(1)),
        spill_instructions=counts["spill"],
        smem_bytes=int(shared),
        num_warps=options["num_warps"],
        num_stages=options["num_stages"],
        instructions=len(instrs),
        counts=counts,
        tensor_core=tensor_core,
        mma_flops_per_warp=precisions,
        loops=innermost_loops(instrs, labels),
    )


def compile_launch(launch: Any, use_cache: bool = True) -> tuple[KernelInfo, str]:
    """Compile ``launch`` for sm_90 (or read the cache); returns (info, cache key)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn, signature, constexprs, attrs, options = specialize(launch)
    src = ASTSource(fn, signature, constexprs, attrs)
    key = hashlib.sha256(
        f"{src.hash()}-{sorted(options.items())}-{triton.__version__}-v3".encode()
    ).hexdigest()[:32]
    path = cache_dir() / f"{key}.json"
    if use_cache and path.exists():
        try:
            return KernelInfo.from_json(json.loads(path.read_text())), key
        except (ValueError, TypeError, KeyError):
            pass  # a stale or torn entry: recompile
    compiled = triton.compile(src, target=GPUTarget("cuda", TARGET_ARCH, 32), options=options)
    info = _analyse(launch.name, compiled.asm["cubin"], compiled.metadata.shared, options)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info.to_json()))
    os.replace(tmp, path)
    return info, key
