#!/usr/bin/env bash
# Run the two-process gloo DDP test N times in a row (default 30) and count clean passes.
# A run counts as clean when pytest passes and neither rank printed an abort at exit
# ("terminate called ...", SIGABRT). Logs of failing runs are kept in $LOG_DIR.
#
#   scripts/ddp_loop.sh 30
set -u
N="${1:-30}"
LOG_DIR="${LOG_DIR:-$(mktemp -d -t ddp_loop.XXXXXX)}"
mkdir -p "$LOG_DIR"
TEST="tests/train/test_ddp.py::test_two_process_gloo_ddp"
cd "$(dirname "$0")/.."
pass=0
for i in $(seq 1 "$N"); do
    log="$LOG_DIR/run_$i.log"
    if timeout 600 python -m pytest "$TEST" -q -x -p no:xdist -p no:randomly -p no:cacheprovider \
        >"$log" 2>&1 && ! grep -q "terminate called\|SIGABRT\|core dumped" "$log"; then
        pass=$((pass + 1))
        rm -f "$log"
    else
        echo "run $i failed (log: $log)"
    fi
    echo "run $i/$N: $pass clean so far"
done
echo "DDP loop: $pass/$N clean passes"
[ "$pass" -eq "$N" ]
