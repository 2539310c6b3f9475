#!/usr/bin/env bash
# Stop the daemons tests/slurm/start.sh DIR started (by their pid files), and cancel what is left of their jobs.
set -uo pipefail
dir=$1
if [ -f "$dir/slurm.conf" ]; then
  SLURM_CONF="$dir/slurm.conf" scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
fi
for name in slurmd slurmctld munged; do
  pid_file="$dir/$name.pid"
  [ -f "$pid_file" ] || continue
  pid=$(cat "$pid_file")
  kill "$pid" 2>/dev/null || continue
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
done
exit 0
