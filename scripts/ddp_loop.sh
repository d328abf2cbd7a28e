#!/usr/bin/env bash
# Run the two-process gloo tests N times in a row (default 30) and count clean passes.
# A run counts as clean when pytest passes and no rank printed an abort at exit
# ("terminate called ...", SIGABRT). Logs of failing runs are kept in $LOG_DIR.
#
#   scripts/ddp_loop.sh 30                     the DDP training test and the NT-Xent gloo test
#   scripts/ddp_loop.sh 100 tests/distributed/test_nt_xent_gloo.py     only the tests named
set -u
N="${1:-30}"
shift || true
LOG_DIR="${LOG_DIR:-$(mktemp -d -t ddp_loop.XXXXXX)}"
mkdir -p "$LOG_DIR"
if [ "$#" -gt 0 ]; then
    TEST=("$@")
else
    TEST=(tests/train/test_ddp.py::test_two_process_gloo_ddp tests/distributed/test_nt_xent_gloo.py)
fi
cd "$(dirname "$0")/.."
pass=0
for i in $(seq 1 "$N"); do
    log="$LOG_DIR/run_$i.log"
    if timeout 600 python -m pytest "${TEST[@]}" -q -x -p no:xdist -p no:randomly -p no:cacheprovider \
        >"$log" 2>&1 && ! grep -q "terminate called\|SIGABRT\|core dumped" "$log"; then
        pass=$((pass + 1))
        rm -f "$log"
    else
        echo "run $i failed (log: $log)"
    fi
    echo "run $i/$N: $pass clean so far"
done
echo "DDP loop: $pass/$N clean passes (${TEST[*]})"
[ "$pass" -eq "$N" ]
