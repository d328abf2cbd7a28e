"""Rows of the static report: one per kernel of an op at a size, and one ``kernel: "total"``
per op and size (kernels + host-side aten ops + host syncs). The model is in
:mod:`muse_fast.static.model`; every time here is an estimate."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from . import model as M
from .capture import Capture, HostOp, _nbytes, storage_key
from .cases import Case
from .sass import KernelInfo, compile_launch

_MULT = {"tf32x3": 3, "bf16x3": 3, "bf16x6": 6}


@dataclass
class Traffic:
    """Bytes of one kernel (or host op): HBM, L2-resident, and the floor's share."""

    hbm: float = 0.0
    l2: float = 0.0
    floor: float = 0.0

    def time(self, mem_eff: float) -> float:
        return self.hbm / (M.HBM_BPS * mem_eff) + self.l2 / M.L2_BPS


@dataclass
class _Storages:
    shared: set[int]  # written by one source and read by another within the step
    chunked: set[int]  # shared and passed to several launches of one kernel (a chunk buffer)
    resident: set[int]  # shared and at most L2_RESIDENT bytes: stays in L2
    external: set[int]  # inputs, parameters, outputs, gradients (what the floor counts)
    rewritten: set[int]  # touched by several aten ops (a chunk buffer refilled per launch)

    @classmethod
    def of(cls, cap: Capture) -> _Storages:
        sources: dict[int, set[str]] = {}
        per_kernel: dict[tuple[int, str], int] = {}
        caps: dict[int, int] = {}
        for lc in cap.launches:
            for a in lc.args:
                if isinstance(a, torch.Tensor):
                    key, n = storage_key(a)
                    sources.setdefault(key, set()).add(lc.name)
                    per_kernel[key, lc.name] = per_kernel.get((key, lc.name), 0) + 1
                    caps[key] = n
        host_touch: dict[int, int] = {}
        for i, h in enumerate(cap.host_ops):
            for key, _, n in h.tensors:
                sources.setdefault(key, set()).add(f"host{i}")
                host_touch[key] = host_touch.get(key, 0) + 1
                caps[key] = n
        shared = {k for k, v in sources.items() if len(v) > 1}
        chunked = {k for (k, _), n in per_kernel.items() if n > 1 and k in shared}
        resident = {k for k in shared if caps[k] <= M.L2_RESIDENT_BYTES}
        rewritten = {k for k, n in host_touch.items() if n > 1}
        return cls(shared, chunked, resident, cap.external, rewritten)


def _kernel_traffic(launches: list[Any], st: _Storages, touched: dict) -> Traffic:
    t = Traffic()
    once: set[tuple] = set()
    for lc in launches:
        for a in lc.args:
            if not isinstance(a, torch.Tensor):
                continue
            key, _ = storage_key(a)
            n = _nbytes(a) * touched.get(a.numel(), 1.0)  # kernels that read a subset
            if key not in st.rewritten:  # the same view in every launch moves once
                view = (key, a.storage_offset(), tuple(a.shape), tuple(a.stride()))
                if view in once:
                    continue
                once.add(view)
            if key in st.resident:
                t.l2 += n
            else:
                t.hbm += n
            if key in st.external:
                t.floor += n
    return t


def _hint(case: Case, launch: Any) -> dict[str, float]:
    """The case's work for this kernel: the entry whose key the kernel name starts with."""
    for frag, work in sorted(case.work.items(), key=lambda kv: -len(kv[0])):
        if launch.name.startswith(frag):
            return work(launch.constexprs) if callable(work) else work
    return {}


def _precision_mult(launch: Any) -> int:
    return max([_MULT.get(v, 1) for v in launch.constexprs.values() if isinstance(v, str)] or [1])


def _dynamic(info: KernelInfo, ctas: int, work: dict[str, float], mult: int) -> dict[str, float]:
    """Dynamic warp-instruction counts (total, and per class) over the whole grid."""
    w = info.num_warps
    loops = info.loops
    iters = [float(ctas)] * len(loops)  # loops without an anchor: once per CTA (lower bound)
    anchor = None
    mma_loops = [i for i, lp in enumerate(loops) if lp.mma_flops]
    split = work.get("mma_loops")
    if split and len(split) == len(mma_loops):  # the work of each dot loop, in source order
        for i, flops in zip(mma_loops, split):
            iters[i] = max(flops * mult / (loops[i].mma_flops * w), ctas)
        anchor = "mma"
    elif work.get("mma") and mma_loops:
        per_iter = sum(loops[i].mma_flops for i in mma_loops) * w
        straight = max(0.0, sum(info.mma_flops_per_warp.values()) - per_iter / w) * w * ctas
        n = max(0.0, work["mma"] * mult - straight) / per_iter
        for i in mma_loops:
            iters[i] = max(n, ctas)
        anchor = "mma"
    else:
        for key, cls, flops in (("ffma", "ffma", 64), ("exp", "ex2", 32)):
            cand = [i for i, lp in enumerate(loops) if lp.counts.get(cls)]
            if work.get(key) and cand:
                i = max(cand, key=lambda j: loops[j].counts[cls])
                iters[i] = max(work[key] / (loops[i].counts[cls] * flops * w), ctas)
                anchor = key
                break
    straight_len = info.instructions - sum(lp.length for lp in loops)
    dyn = {"instructions": float(straight_len) * ctas * w}
    straight_counts = dict(info.counts)
    for lp in loops:
        for cls, n in lp.counts.items():
            straight_counts[cls] -= n
    for cls, n in straight_counts.items():
        dyn[cls] = float(n) * ctas * w
    mma_flops = (sum(info.mma_flops_per_warp.values()) - sum(lp.mma_flops for lp in loops)) * w
    mma_flops *= ctas
    for lp, it in zip(loops, iters):
        dyn["instructions"] += lp.length * it * w
        for cls, n in lp.counts.items():
            dyn[cls] += n * it * w
        mma_flops += lp.mma_flops * it * w
    dyn["mma_flops"] = mma_flops
    dyn["anchor"] = anchor
    # the tile: the innermost loop with the most dynamic instructions (else the whole kernel)
    hot = max(range(len(loops)), key=lambda i: loops[i].length * iters[i], default=None)
    dyn["tile"] = loops[hot].length if hot is not None else info.instructions
    return dyn


def kernel_row(case: Case, launches: list[Any], info: KernelInfo, st: _Storages) -> dict[str, Any]:
    ctas = sum(math.prod(lc.grid) for lc in launches)
    traffic = _kernel_traffic(launches, st, case.touched)
    nbytes = traffic.hbm + traffic.l2
    work = _hint(case, launches[0])
    dyn = _dynamic(info, ctas, work, _precision_mult(launches[0]))
    occ = M.occupancy(info.regs, info.smem_bytes, info.num_warps)
    grid_ctas = max(math.prod(lc.grid) for lc in launches)
    waves, wave_eff = M.wave_efficiency(grid_ctas, occ.ctas_per_sm)
    # resident warps per SM actually reached (a small grid fills the SMs only partly)
    achieved = min(grid_ctas / M.SMS, occ.ctas_per_sm) * info.num_warps / M.MAX_WARPS_PER_SM
    pipes = {
        "memory": traffic.time(M.memory_efficiency(achieved)) * wave_eff,
        "mma": dyn["mma_flops"] / M.mma_peak(info.tensor_core) if info.tensor_core else 0.0,
        "ffma": dyn["ffma"] * 64 / M.FFMA_FLOPS,
        "exp": dyn["ex2"] * 32 / M.EXP_PER_S,
        "issue": dyn["instructions"] / (M.SMS * M.ISSUE_PER_CLK_SM * M.CLOCK_HZ),
    }
    bound = max(pipes, key=pipes.get)
    est = pipes[bound] / wave_eff + len(launches) * M.LAUNCH_S
    floor = max(
        traffic.floor / M.HBM_BPS,
        work.get("mma", 0.0) / M.ideal_peak(case.dtype),
        work.get("ffma", 0.0) / M.PEAK["tf32"],
        work.get("exp", 0.0) / M.EXP_PER_S,
    )
    c = info.counts
    return {
        "op": case.op,
        "kernel": info.name,
        "size": case.size,
        "launches": len(launches),
        "grid": list(launches[0].grid),
        "ctas": ctas,
        "num_warps": info.num_warps,
        "num_stages": info.num_stages,
        "constexprs": {k: v for k, v in launches[0].constexprs.items()},
        "regs": info.regs,
        "spills": info.spill_instructions,
        "local_bytes": info.local_bytes,
        "stack_bytes": info.stack_bytes,
        "smem_bytes": info.smem_bytes,
        "ctas_per_sm": occ.ctas_per_sm,
        "occupancy": round(occ.occupancy, 4),
        "occupancy_limiter": occ.limiter,
        "waves": round(waves, 3),
        "tensor_core": info.tensor_core,
        "dot_in_source": "tl.dot(" in getattr(launches[0].kernel, "src", ""),
        "instructions": info.instructions,
        "instructions_per_tile": dyn["tile"],
        "mma": c["mma"],
        "ffma": c["ffma"],
        "mufu_ex2": c["ex2"],
        "ldg": c["ldg"],
        "stg": c["stg"],
        "ldgsts": c["ldgsts"],
        "tma": c["tma"],
        "shfl": c["shfl"],
        "bar": c["bar"],
        "atom": c["atom"],
        "membar": c["membar"],
        "cvt": c.get("cvt", 0),
        "bytes": int(nbytes),
        "bytes_hbm": int(traffic.hbm),
        "bytes_l2": int(traffic.l2),
        "bound": bound,
        "anchor": dyn["anchor"],
        "est_ms": est * 1e3,
        "floor_ms": floor * 1e3,
        "ratio": est / floor if floor > 0 else None,
    }


def _host_times(h: HostOp, st: _Storages) -> tuple[float, float]:
    """(estimate, floor) seconds of one host-side aten op."""
    total = sum(b for _, b, _ in h.tensors) or 1
    l2_share = sum(b for k, b, _ in h.tensors if k in st.resident) / total
    free_share = sum(b for k, b, _ in h.tensors if k not in st.external) / total
    mem = h.bytes * (1 - l2_share) / (M.HBM_BPS * M.MEM_EFFICIENCY) + h.bytes * l2_share / M.L2_BPS
    floor_bytes = h.bytes
    if h.note == "out= copy":
        floor_bytes = h.bytes * 2 // 3  # without the extra write + read of the copy
    floor = floor_bytes * (1 - free_share) / M.HBM_BPS
    if h.kind == "gemm":
        peak = M.ideal_peak(h.dtype)
        return max(mem, h.flops / (peak * M.GEMM_EFFICIENCY)) + M.LAUNCH_S, max(
            floor, h.flops / peak
        )
    return mem + M.LAUNCH_S, floor


def total_row(case: Case, cap: Capture, krows: list[dict[str, Any]]) -> dict[str, Any]:
    st = _Storages.of(cap)
    host = [_host_times(h, st) for h in cap.host_ops]
    est = sum(r["est_ms"] for r in krows) + 1e3 * (
        sum(e for e, _ in host) + len(cap.host_syncs) * M.HOST_SYNC_S
    )
    floor = sum(r["floor_ms"] for r in krows) + 1e3 * sum(f for _, f in host)
    by_name: dict[str, list[float]] = {}
    for h, (e, _) in zip(cap.host_ops, host):
        key = h.name + (f" ({h.note})" if h.note else "")
        agg = by_name.setdefault(key, [0, 0.0, 0.0])
        agg[0] += 1
        agg[1] += h.bytes
        agg[2] += e * 1e3
    return {
        "op": case.op,
        "kernel": "total",
        "size": case.size,
        "launches": sum(r["launches"] for r in krows) + len(cap.host_ops),
        "regs": None,
        "spills": sum(r["spills"] for r in krows),
        "smem_bytes": None,
        "ctas_per_sm": None,
        "tensor_core": None,
        "kernels": len(krows),
        "host_ops": {
            k: {"calls": v[0], "bytes": int(v[1]), "est_ms": v[2]} for k, v in by_name.items()
        },
        "host_ops_est_ms": 1e3 * sum(e for e, _ in host),
        "host_syncs": len(cap.host_syncs),
        "host_sync_kinds": sorted(set(cap.host_syncs)),
        "error": cap.error,
        "est_ms": est,
        "floor_ms": floor,
        "ratio": est / floor if floor > 0 else None,
    }


def _config(lc: Any) -> str:
    return f"{lc.name}|{sorted(lc.constexprs.items())}|{lc.num_warps}|{lc.num_stages}"


def case_rows(case: Case, cap: Capture, use_cache: bool = True) -> list[dict[str, Any]]:
    """One row per kernel configuration (chunked launches of one configuration share a row;
    the first launch is compiled), then the op's total."""
    groups: dict[str, list[Any]] = {}
    for lc in cap.launches:
        groups.setdefault(_config(lc), []).append(lc)
    st = _Storages.of(cap)
    krows, errors = [], []
    for lcs in groups.values():
        try:
            info, _ = compile_launch(lcs[0], use_cache)
        except Exception as e:  # report the kernel that does not compile, keep the others
            errors.append(f"{lcs[0].name}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
            continue
        krows.append(kernel_row(case, lcs, info, st))
    total = total_row(case, cap, krows)
    if errors:
        total["compile_errors"] = errors
    return [*krows, total]
