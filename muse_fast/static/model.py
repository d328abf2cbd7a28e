"""The H100/H200 (sm_90) model behind the report's estimates. Every time it gives is an
estimate from compiler output and byte/FLOP counts, never a measurement.

* Occupancy: CTAs/SM = min(32, 64 // warps, regs limit, shared-memory limit), with registers
  allocated per warp in units of 256 (regs/thread rounded up to 8) out of 65 536, and shared
  memory (plus 1 KB reserved per CTA) out of 228 KB. Waves = CTAs / (CTAs/SM x 132 SMs).
* Pipes, each a lower bound on the kernel's time: HBM bytes / 3.0 TB/s; MMA FLOPs / the
  precision's peak (bf16/fp16 ~700 TF, tf32 ~495 TF dense; tf32x3 issues 3 TF32 MMAs, which the
  SASS count already shows); FFMA FLOPs / 67 TF; MUFU.EX2 / 3.9 T/s; issue: warp instructions /
  (132 SMs x 4 schedulers x 1.755 GHz).
* Dynamic counts: straight-line code runs once per warp per CTA; an innermost loop runs
  ``iterations`` times, found from the op's work on the loop's anchor (MMA FLOPs per iteration
  from the SASS, else FFMA, else MUFU.EX2). Loops without an anchor count once (a lower bound).
* Kernel estimate = max(pipes), plus 2 us launch latency per launch. Memory runs at 85 % of
  peak, scaled down linearly when fewer than 16 warps/SM are resident (counting the warps the
  grid actually puts on each SM); the compute and issue pipes are divided by the wave
  efficiency waves / ceil(waves) when the grid is under 4 waves. Floor = max(bytes / 3.0 TB/s, the op's
  FLOPs on tensor cores at the input precision, exp / 3.9 T/s) with no launch latency.
* Bytes: each tensor argument once per kernel (its extent when views overlap; the touched
  fraction where a case says a kernel reads only the kept patches); a buffer that aten ops
  refill between launches (a chunk buffer) counts on every launch. A buffer shared between
  kernels / aten ops within the op moves at L2 bandwidth (~7 TB/s) when it is at most 25 MB
  (half the L2), else at HBM bandwidth. The
  floor counts only the op's external tensors (inputs, parameters, outputs, gradients):
  intermediates a fused implementation need not write (spectrum chunks, fp32 scratch, the
  extra copy of ``out=`` FFTs) are free in it.
* Host-side aten ops on the path: bytes / (0.85 x 3.0 TB/s), GEMMs at 75 % of the bf16 (or
  TF32) peak, FFTs memory-bound (cuFFT), 2 us each; a host sync costs 20 us (the queue drains).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SMS = 132
REGS_PER_SM = 65536
SMEM_PER_SM = 228 * 1024
SMEM_RESERVED_PER_CTA = 1024
MAX_WARPS_PER_SM = 64
MAX_CTAS_PER_SM = 32
HBM_BPS = 3.0e12
MEM_EFFICIENCY = 0.85
PEAK = {"bf16": 700e12, "f16": 700e12, "tf32": 495e12, "fp32": 67e12, "e4m3": 1400e12}
FFMA_FLOPS = 67e12
EXP_PER_S = 3.9e12
CLOCK_HZ = 1.755e9
ISSUE_PER_CLK_SM = 4
LAUNCH_S = 2e-6
HOST_SYNC_S = 20e-6
GEMM_EFFICIENCY = 0.75
L2_BPS = 7.0e12  # L2 hit bandwidth (estimate)
L2_RESIDENT_BYTES = 25 << 20  # half of the 50 MB L2


@dataclass
class Occupancy:
    ctas_per_sm: int
    occupancy: float  # resident warps / 64
    limiter: str


def occupancy(regs: int, smem: int, warps: int) -> Occupancy:
    regs_per_warp = math.ceil(max(regs, 1) / 8) * 8 * 32
    regs_per_warp = math.ceil(regs_per_warp / 256) * 256
    limits = {
        "ctas": MAX_CTAS_PER_SM,
        "warps": MAX_WARPS_PER_SM // warps,
        "registers": REGS_PER_SM // (regs_per_warp * warps),
        "shared memory": SMEM_PER_SM // (smem + SMEM_RESERVED_PER_CTA) if smem else 10**9,
    }
    limiter = min(limits, key=limits.get)
    ctas = max(0, limits[limiter])
    return Occupancy(ctas, ctas * warps / MAX_WARPS_PER_SM, limiter)


def mma_peak(tensor_core: str | None) -> float:
    if not tensor_core:
        return FFMA_FLOPS
    prec = tensor_core.split()[-1]
    return PEAK.get(prec, PEAK["tf32"])


def ideal_peak(dtype: str) -> float:
    """Tensor-core peak a kernel of this input dtype could use (the floor)."""
    return PEAK["bf16"] if dtype in ("bfloat16", "float16") else PEAK["tf32"]


def wave_efficiency(ctas: int, ctas_per_sm: int) -> tuple[float, float]:
    """(waves, efficiency) on 132 SMs; grids of 4+ waves count as fully efficient."""
    if ctas_per_sm <= 0 or ctas <= 0:
        return 0.0, 1.0
    waves = ctas / (ctas_per_sm * SMS)
    if waves >= 4:
        return waves, 1.0
    return waves, waves / math.ceil(waves)


def memory_efficiency(occ: float) -> float:
    return MEM_EFFICIENCY * min(1.0, occ / 0.25) if occ > 0 else MEM_EFFICIENCY
