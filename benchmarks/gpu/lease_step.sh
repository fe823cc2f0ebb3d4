#!/usr/bin/env bash
# Run one step of a GPU lease and bring all of its output back as one archive: the device tool returns at most
# 8 files from $OUT, and the steps write many. Usage, on the GPU machine from the repository root:
#   bash benchmarks/gpu/lease_step.sh NAME -- COMMAND [ARGS...]
# COMMAND sees OUT=/tmp/lease-out/NAME; its console goes to console.log there; $OUT/NAME.tgz holds the folder.
set -uo pipefail
name=$1; shift
[ "${1:-}" = "--" ] && shift
final=${OUT:?run this on the device machine, where OUT is set}
step_out=/tmp/lease-out/$name
mkdir -p "$step_out"
start=$(date +%s)
( export OUT=$step_out; PYTHONUNBUFFERED=1 "$@" ) 2>&1 | tee "$step_out/console.log"
rc=${PIPESTATUS[0]}
echo "step $name: exit $rc after $(( $(date +%s) - start )) s" | tee -a "$step_out/console.log"
tar czf "$final/$name.tgz" -C /tmp/lease-out "$name"
exit "$rc"
