#!/usr/bin/env bash
# One-command GPU check (`make gpu-check`): on a machine with one H100/H200 and no network,
# install, build, test on CUDA, benchmark at GPU sizes, time the Myna-Hybrid vit-s batch-4096
# training step and search its max batch; everything goes to one folder with the device name,
# versions and commit. Every stage is time-boxed (`timeout`) so a slow one cannot eat the
# others; the budgets add up to under 8 minutes.
#
#   bash scripts/gpu_check.sh            # the real run (needs CUDA)
#   DRY_RUN=1 bash scripts/gpu_check.sh  # on CPU: proves every stage starts (tiny sizes,
#                                        # --collect-only), in seconds; tests/test_gpu_check.py
#
# Environment: OUT (folder; default benchmarks/results/<device>/gpu-check, a temporary folder
# under DRY_RUN), PYTHON (default python), PYTEST_WORKERS (default 4), T_<STAGE> (seconds).
set -u -o pipefail

PYTHON=${PYTHON:-python}
DRY_RUN=${DRY_RUN:-0}
[ "$DRY_RUN" = "0" ] && DRY_RUN=""
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PYTHONDONTWRITEBYTECODE=1
unset TRITON_INTERPRET MUSE_FAST_TILES MUSE_FAST_BACKEND

if [ -n "$DRY_RUN" ]; then
  OUT=${OUT:-$(mktemp -d -t gpu-check-dry.XXXXXX)}
else
  DEVICE=$("$PYTHON" -c "import torch; from muse_fast.benchmark import device_slug; \
print(device_slug('cuda') if torch.cuda.is_available() else 'no-cuda')" 2>/dev/null || echo unknown)
  if [ "$DEVICE" = "no-cuda" ] || [ "$DEVICE" = "unknown" ]; then
    echo "gpu-check: no CUDA device (use DRY_RUN=1 on a CPU machine)" >&2
    exit 2
  fi
  OUT=${OUT:-benchmarks/results/$DEVICE/gpu-check}
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHON DRY_RUN OUT
STATUS="$OUT/stages.tsv"
printf 'stage\trc\tseconds\tbudget_s\n' >"$STATUS"
FAILED=0

# stage NAME BUDGET: runs st_NAME in a child bash under `timeout BUDGET`, log in $OUT/NAME.log
stage() {
  local name=$1 budget=$2
  local var="T_${name^^}"
  budget=${!var:-$budget}
  echo "== gpu-check: $name (budget ${budget}s)"
  local t0=$SECONDS rc=0
  timeout --kill-after=10 "$budget" bash -c "set -o pipefail; $(declare -f "st_$name"); st_$name" \
    >"$OUT/$name.log" 2>&1 || rc=$?
  local dt=$((SECONDS - t0))
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$dt" "$budget" >>"$STATUS"
  if [ "$rc" = 0 ]; then
    echo "   ok (${dt}s)"
  else
    FAILED=1
    [ "$rc" = 124 ] && echo "   TIMED OUT after ${budget}s" || echo "   FAILED rc=$rc (${dt}s)"
    tail -n 15 "$OUT/$name.log" | sed 's/^/   | /'
  fi
}

# 1. environment: device, driver, versions, commit
st_info() {
  "$PYTHON" - "$OUT/environment.json" <<'EOF'
import json, platform, subprocess, sys
import torch
env = {"python": platform.python_version(), "torch": torch.__version__,
       "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
for mod in ("triton", "torchaudio", "numpy", "pybind11", "pytest", "xdist", "pytest_benchmark"):
    try:
        env[mod] = getattr(__import__(mod), "__version__", "present")
    except ImportError:
        env[mod] = None
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    env.update(device=p.name, capability=f"{p.major}.{p.minor}", memory_gb=round(p.total_memory / 2**30, 1),
               sms=p.multi_processor_count)
    try:
        env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                       capture_output=True, text=True).stdout.strip()
    except OSError:
        env["driver"] = None
else:
    env["device"] = "cpu (dry run)"
try:
    env["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    env["dirty"] = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                       capture_output=True, text=True).stdout.strip())
except OSError:
    env["commit"] = None
json.dump(env, open(sys.argv[1], "w"), indent=1)
print(json.dumps(env, indent=1))
EOF
}

# 2. install (editable, offline) and build the C++ extension
st_install() {
  if [ -n "$DRY_RUN" ]; then  # prove the tools start; no rebuild of the shared tree
    "$PYTHON" -c "import setuptools, pybind11, torch.utils.cpp_extension; print('build tools ok')" &&
      "$PYTHON" -m pip --version && "$PYTHON" setup.py --name
  else
    "$PYTHON" -m pip install -e . --no-deps --no-build-isolation -q &&
      "$PYTHON" -c "import muse_fast._C as C; print('extension', C.__file__)"
  fi
}

# 3. the package imports without soundfile / librosa / mir_eval (they are blocked here, so the
#    check means the same on a machine that has them); lists every module that does not
st_optional_deps() {
  "$PYTHON" - <<'EOF'
import importlib, pkgutil, sys, traceback
BLOCKED = ("soundfile", "librosa", "mir_eval")
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked by gpu-check (absent on the GPU machine)")
sys.meta_path.insert(0, Block())
for m in list(sys.modules):
    if m.split(".")[0] in BLOCKED:
        del sys.modules[m]
import muse_fast
bad = []
for info in pkgutil.walk_packages(muse_fast.__path__, "muse_fast."):
    if info.name.endswith("__main__"):  # importing it runs the CLI
        continue
    try:
        importlib.import_module(info.name)
    except Exception as e:
        frames = [f for f in traceback.extract_tb(e.__traceback__) if "muse_fast" in f.filename]
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        bad.append(f"{info.name}: {e} (at {where})")
print("\n".join(bad) or "every muse_fast module imports without " + ", ".join(BLOCKED))
sys.exit(1 if bad else 0)
EOF
}

# 4. the test suite on CUDA (the Triton kernels run for real; no interpreter). The dry run
#    collects it with soundfile / librosa / mir_eval blocked (a pytest plugin loaded first), so
#    a test module that needs them at import time shows up on the CPU too.
st_tests() {
  local args=(tests -q -p no:randomly -n "${PYTEST_WORKERS:-4}" --dist loadfile
    --junitxml="$OUT/tests.xml")
  if [ -n "$DRY_RUN" ]; then
    mkdir -p "$OUT/plugins"
    cat >"$OUT/plugins/gpu_check_block.py" <<'PLUGIN'
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("soundfile", "librosa", "mir_eval"):
            raise ImportError(f"{name} is blocked by gpu-check (absent on the GPU machine)")
sys.meta_path.insert(0, _Block())
PLUGIN
    export PYTHONPATH="$OUT/plugins${PYTHONPATH:+:$PYTHONPATH}"
    "$PYTHON" -m pytest tests -q --collect-only -p gpu_check_block -p no:randomly -p no:xdist \
      --continue-on-collection-errors >"$OUT/tests_collect.txt" 2>&1
    "$PYTHON" - "$OUT/tests_collect.txt" <<'PARSE'
import re, sys
text = open(sys.argv[1]).read()
blocks = re.split(r"_+ ERROR collecting (\S+) _+", text)
optional, broken = [], []
for path, body in zip(blocks[1::2], blocks[2::2]):
    where = re.findall(r"^(tests/\S+:\d+): in <module>", body, re.M)
    line = where[-1] if where else path
    (optional if "is blocked by gpu-check" in body else broken).append(line)
print(re.findall(r"^\d+ tests? collected.*$", text, re.M) or ["no tests collected"])
print("test modules that import soundfile/librosa/mir_eval at import time (they would not "
      "collect on the GPU machine; the real run continues past them):")
print("\n".join("  " + p for p in optional) or "  none")
print("test modules that fail to collect for other reasons:")
print("\n".join("  " + p for p in broken) or "  none")
sys.exit(1 if broken else 0)
PARSE
    return
  fi
  "$PYTHON" -m pytest "${args[@]}" --continue-on-collection-errors
}

# 5. the benchmark suite at GPU sizes (rows land in benchmarks/results/<device>/)
st_benchmarks() {
  local args=(benchmarks --benchmark -q -p no:randomly --deselect
    benchmarks/test_bench_claims.py::test_bench_myna_max_batch)
  [ -n "$DRY_RUN" ] && args+=(--collect-only)
  "$PYTHON" -m pytest "${args[@]}"
}

# 6. Myna-Hybrid vit-s, batch 4096, 90 % masking: one full training step (forward, backward,
#    Adam), samples/s (median of 5 after 2 warm-ups) and peak memory
st_train_step() {
  "$PYTHON" - "$OUT/train_step.json" "${DRY_RUN:+dry}" <<'EOF'
import json, statistics, sys, time
import torch
from muse_fast.benchmark import make_train_step
dry = len(sys.argv) > 2 and sys.argv[2] == "dry"
dev = torch.device("cpu" if dry else "cuda")
size, batch, warm, reps = ("tiny", 2, 1, 1) if dry else ("vit-s", 4096, 2, 5)
step, model, inputs = make_train_step("myna-hybrid", device=dev, batch_size=batch,
                                      model={"size": size, "mask_ratio": 0.9})
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
for _ in range(warm):
    step()
sync()
if dev.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
times = []
for _ in range(reps):
    t0 = time.perf_counter(); step(); sync(); times.append(time.perf_counter() - t0)
med = statistics.median(times)
row = {"model": f"myna-hybrid {size}", "batch": batch, "mask_ratio": 0.9, "device": str(dev),
       "step_s_median": med, "step_s_all": times, "samples_per_s": batch / med,
       "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None,
       "measured": not dry}
json.dump(row, open(sys.argv[1], "w"), indent=1)
print(json.dumps(row, indent=1))
EOF
}

# 7. the Myna max-batch search (benchmarks/test_bench_claims.py)
st_max_batch() {
  local args=(benchmarks/test_bench_claims.py --benchmark -q -p no:randomly -k max_batch)
  [ -n "$DRY_RUN" ] && args+=(--collect-only)
  "$PYTHON" -m pytest "${args[@]}"
}

T0=$SECONDS
stage info 20
stage install 75
stage optional_deps 25
stage tests 140
stage benchmarks 110
stage train_step 40
stage max_batch 55
cp "$OUT/stages.tsv" "$OUT/stages.txt" 2>/dev/null
{
  echo "# gpu-check $(date -u +%FT%TZ) ${DRY_RUN:+(DRY RUN: CPU, nothing measured)}"
  echo
  echo "total $((SECONDS - T0)) s; folder $OUT"
  echo
  echo '```'
  column -t -s $'\t' "$OUT/stages.tsv" 2>/dev/null || cat "$OUT/stages.tsv"
  echo '```'
} >"$OUT/SUMMARY.md"
cat "$OUT/SUMMARY.md"
exit $FAILED
