#!/usr/bin/env bash
# Run the README's test command under N fresh seeds, one after another.
#
#   scripts/seed_sweep.sh N [pytest args...]      e.g. scripts/seed_sweep.sh 30
#   SWEEP_SHUFFLE=1 scripts/seed_sweep.sh 5       each run also in a shuffled order (-p randomly)
#
# Prints each seed with pass/fail, then one summary line; exits 1 if any seed failed. Logs of
# failing seeds stay in $SWEEP_LOG_DIR (default runs/seed_sweep/), passing seeds' logs are removed.
# Replay a failing seed with MUSE_FAST_TEST_SEED=<seed> make test (add PYTEST_ARGS="-p randomly"
# for a shuffled one: the order follows the same seed).
set -uo pipefail
cd "$(dirname "$0")/.."

n=${1:-5}
shift || true
if ! [[ "$n" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 N [pytest args...]   (N: number of fresh seeds, >= 1)" >&2
    exit 2
fi
PY=${PYTHON:-python}
logs=${SWEEP_LOG_DIR:-runs/seed_sweep}
mkdir -p "$logs"
extra=("$@")
if [[ "${SWEEP_SHUFFLE:-0}" == 1 ]]; then
    extra+=(-p randomly)
fi

passed=0
failed=0
failing=()
start=$(date +%s)
for i in $(seq 1 "$n"); do
    seed=$("$PY" -c "import random; print(random.SystemRandom().randrange(2**31))")
    log="$logs/seed-$seed.log"
    t0=$(date +%s)
    # The README's command (make test), with this seed and any extra pytest args.
    if MUSE_FAST_TEST_SEED=$seed make --no-print-directory test PYTHON="$PY" \
        PYTEST_ARGS="${extra[*]:-}" >"$log" 2>&1; then
        passed=$((passed + 1))
        echo "[$i/$n] seed $seed: pass ($(($(date +%s) - t0)) s)"
        rm -f "$log"
    else
        failed=$((failed + 1))
        failing+=("$seed")
        echo "[$i/$n] seed $seed: FAIL ($(($(date +%s) - t0)) s), log: $log"
        grep -E "^(FAILED|ERROR) " "$log" | sed 's/^/    /' | head -20
    fi
done

echo "seed_sweep: $passed passed, $failed failed of $n seeds in $(($(date +%s) - start)) s${failing[*]:+ (failing seeds: ${failing[*]})}"
[[ $failed -eq 0 ]]
