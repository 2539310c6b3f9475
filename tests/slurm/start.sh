#!/usr/bin/env bash
# Start a single-node SLURM (munged + slurmctld + slurmd, this machine as the only node) with every file under DIR,
# for tests/test_slurm.py. Needs root and Debian's slurm-wlm + munge. Clients use it with SLURM_CONF=DIR/slurm.conf.
# No accounting (accounting_storage/none): sacct fails, as on clusters without slurmdbd.
#   tests/slurm/start.sh DIR [CPUS]    (CPUS: how many one-CPU jobs may run at once; default: nproc)
#   tests/slurm/stop.sh DIR
set -euo pipefail
dir=$(mkdir -p "$1" && cd "$1" && pwd)
cpus=${2:-$(nproc)}
host=$(hostname -s)
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
# Ports nobody else on the machine uses: a free pair, chosen by the kernel.
read -r ctld_port slurmd_port < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("", 0))
print(*(s.getsockname()[1] for s in socks))
PY
)
mkdir -p "$dir/state" "$dir/spool"

key=/etc/munge/munge.key
if [ ! -s "$key" ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of="$key" bs=1 count=1024 status=none
  chmod 400 "$key"
fi
# munged as root with its own socket, so a system munged (if any) is left alone.
munged --force --key-file="$key" --socket="$dir/munge.socket" --pid-file="$dir/munged.pid" \
  --log-file="$dir/munged.log" --seed-file="$dir/munged.seed"

cat > "$dir/slurm.conf" <<CONF
ClusterName=tlxtest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
KillWait=1
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=tlx Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF

export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 120); do
  state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
  if [ "$state" = idle ]; then
    echo "SLURM up: node $host idle, SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.5
done
echo "SLURM did not come up (node state: ${state:-none}); logs in $dir" >&2
tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
exit 1
