#!/usr/bin/env bash
# A single-node SLURM cluster on this machine (Debian, root): for testing profiles/slurm end to end.
#
# Usage: scripts/slurm-cluster.sh start [--force] | stop | status
#   start   install slurmctld slurmd slurm-client munge if missing (apt-get --no-install-recommends), write
#           /etc/slurm/slurm.conf (one node = this machine, one partition), start munged, slurmctld and slurmd,
#           wait until the node is idle. Idempotent: if the cluster already answers, says so and exits 0.
#           --force replaces a slurm.conf that this script did not write (it is kept as slurm.conf.before-enf).
#   stop    cancel the jobs still queued or running, then stop the daemons by their PID files (slurmd, slurmctld,
#           munged).
#   status  print the daemons and the node's state; exit 0 if the cluster accepts jobs, 1 if not.
# Settings (environment): ENF_SLURM_PARTITION (partition name, default main), ENF_SLURM_WAIT (seconds to wait for
# each daemon, default 90).
# Exit status: 0 done, 1 failed (the message names the step), 2 usage, 3 cannot run here (not root, no apt-get).
# Why the configuration looks so (no cgroups, no accounting): workflow/README.md, "GPUs and clusters".
set -euo pipefail

PARTITION="${ENF_SLURM_PARTITION:-main}"
WAIT="${ENF_SLURM_WAIT:-90}"
CONF=/etc/slurm/slurm.conf
MARK="# written by enf scripts/slurm-cluster.sh"
PACKAGES=(slurmctld slurmd slurm-client munge)
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
LOGDIR=/var/log/slurm
LOCK=/run/enf-slurm-cluster.lock   # start and stop hold it: two callers never start or stop daemons at once
SPOOL=/var/spool/enf-slurm   # own state directories: never mixed with another cluster's

say() { echo "slurm-cluster: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
# log_tail FILE: its last lines, for error messages.
log_tail() { [ -f "$1" ] && printf "\n  last lines of %s:\n%s" "$1" "$(tail -n 5 "$1" | sed 's/^/    /')"; }
cannot() { say "CANNOT RUN HERE: $*"; exit 3; }

# pid_alive FILE NAME: the PID in FILE is a running process called NAME.
pid_alive() {
  local pid
  pid="$(cat "$1" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

node_name() { hostname -s; }

node_state() { sinfo -h -N -n "$(node_name)" -o %T 2>/dev/null | head -n1; }

# cluster_up: the controller answers and our node can run jobs.
cluster_up() {
  command -v scontrol >/dev/null 2>&1 || return 1
  scontrol ping 2>/dev/null | grep -q "is UP" || return 1
  case "$(node_state)" in idle* | mixed* | allocated* | completing*) return 0 ;; *) return 1 ;; esac
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every second until it succeeds.
wait_for() {
  local seconds="$1" what="$2"
  shift 2
  local end=$((SECONDS + seconds))
  until "$@"; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 1
  done
  say "$what after $((SECONDS - end + seconds)) s"
}

install_packages() {
  local missing=()
  local pkg
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || cannot "packages missing (${missing[*]}) and no apt-get to install them"
  say "installing ${missing[*]} (apt-get --no-install-recommends)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || die "apt-get update failed (no access to the Debian archive?)"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
    || die "apt-get install ${missing[*]} failed"
}

write_conf() {
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    [ "${FORCE:-0}" = 1 ] || die "$CONF exists and was not written by this script; rerun with 'start --force' \
to replace it (it is kept as $CONF.before-enf)"
    cp -p "$CONF" "$CONF.before-enf"
    say "kept the previous $CONF as $CONF.before-enf"
  fi
  local node cpus mem
  node="$(node_name)"
  cpus="$(nproc --all)"
  mem="$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)"  # MB, a little under the machine's
  mkdir -p /etc/slurm "$SPOOL/ctld" "$SPOOL/d" "$LOGDIR"
  cat >"$CONF.tmp" <<EOF
$MARK: a single-node cluster without cgroups or accounting.
ClusterName=enf-local
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# finished jobs stay visible to squeue for 5 minutes (Snakemake's status command then relies on squeue)
MinJobAge=300
# scancel: SIGTERM, then SIGKILL after KillWait seconds
KillWait=10
ReturnToService=2
MailProg=/bin/true
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.tmp" "$CONF"
}

ensure_hostname_resolves() {
  local node
  node="$(node_name)"
  getent hosts "$node" >/dev/null 2>&1 && return 0
  echo "127.0.0.1 $node" >>/etc/hosts
  say "added '$node' to /etc/hosts"
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    return 0
  fi
  [ -s /etc/munge/munge.key ] || {
    say "creating /etc/munge/munge.key"
    mungekey --create --keyfile=/etc/munge/munge.key || die "could not create /etc/munge/munge.key"
  }
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  chmod 0755 /run/munge
  pid_alive "$MUNGE_PID" munged || runuser -u munge -- /usr/sbin/munged 9>&- \
    || die "munged did not start (see /var/log/munge/munged.log)"
  wait_for "$WAIT" "munge answers" sh -c 'munge -n | unmunge >/dev/null 2>&1' \
    || die "munge -n | unmunge fails after ${WAIT} s (see /var/log/munge/munged.log)"
}

start_slurm() {
  if ! pid_alive "$CTLD_PID" slurmctld; then
    # -c: start with a clean state (no jobs left from an earlier cluster); 9>&-: the daemons must not hold $LOCK
    slurmctld -c 9>&- || die "slurmctld did not start$(log_tail "$LOGDIR/slurmctld.log")"
  fi
  wait_for "$WAIT" "slurmctld is UP" sh -c 'scontrol ping 2>/dev/null | grep -q "is UP"' \
    || die "slurmctld does not answer 'scontrol ping' after ${WAIT} s$(log_tail "$LOGDIR/slurmctld.log")"
  if ! pid_alive "$SLURMD_PID" slurmd; then
    slurmd 9>&- || die "slurmd did not start$(log_tail "$LOGDIR/slurmd.log")"
  fi
  local node
  node="$(node_name)"
  node_idle() {
    case "$(node_state)" in
      idle* | mixed* | allocated*) return 0 ;;
      down* | drain* | fail*) scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1; return 1 ;;
      *) return 1 ;;
    esac
  }
  wait_for "$WAIT" "node $node is idle" node_idle \
    || die "node $node is '$(node_state)', not idle, after ${WAIT} s (sinfo -R: $(sinfo -h -R | head -n1))$(
      log_tail "$LOGDIR/slurmd.log")"
}

cmd_start() {
  if cluster_up; then
    say "already up (node $(node_name) $(node_state), partition $(sinfo -h -o %P | head -n1)); nothing to do"
    return 0
  fi
  [ "$(id -u)" -eq 0 ] || cannot "must run as root (installs packages, writes /etc/slurm, starts daemons)"
  command -v apt-get >/dev/null 2>&1 || command -v slurmctld >/dev/null 2>&1 \
    || cannot "no apt-get (not Debian?) and SLURM is not installed"
  local t0=$SECONDS
  install_packages
  for tool in slurmctld slurmd sbatch squeue munged; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found after installing ${PACKAGES[*]}"
  done
  ensure_hostname_resolves
  write_conf
  start_munge
  start_slurm
  srun -N1 -t 1 true || die "srun true failed: the cluster does not run jobs (see $LOGDIR/)"
  say "up in $((SECONDS - t0)) s: node $(node_name), partition $PARTITION (default), $(nproc --all) CPUs"
}

# stop_daemon PIDFILE NAME: TERM, then KILL after 20 s; only if the PID is still that daemon.
stop_daemon() {
  local file="$1" name="$2" pid
  if ! pid_alive "$file" "$name"; then
    [ -f "$file" ] && rm -f "$file" && say "$name: stale PID file removed"
    return 0
  fi
  pid="$(cat "$file")"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 40); do
    [ -d "/proc/$pid" ] || break
    sleep 0.5
  done
  if [ -d "/proc/$pid" ]; then
    say "$name ($pid) ignored SIGTERM for 20 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
  say "$name ($pid) stopped"
}

# take_lock: hold $LOCK (fd 9) until this script exits; waits for another start or stop to finish.
take_lock() {
  [ -w /run ] || return 0
  exec 9>"$LOCK"
  flock -w 300 9 || die "another scripts/slurm-cluster.sh has held $LOCK for 300 s"
}

cmd_stop() {
  [ "$(id -u)" -eq 0 ] || cannot "must run as root to stop the daemons"
  if scontrol ping 2>/dev/null | grep -q "is UP"; then
    local jobs
    jobs="$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')"
    if [ -n "${jobs// /}" ]; then
      say "cancelling jobs $jobs"
      # shellcheck disable=SC2086
      scancel $jobs || true
      sleep 2
    fi
  fi
  stop_daemon "$SLURMD_PID" slurmd
  stop_daemon "$CTLD_PID" slurmctld
  stop_daemon "$MUNGE_PID" munged
}

cmd_status() {
  local name file
  for name in munged slurmctld slurmd; do
    case "$name" in munged) file="$MUNGE_PID" ;; slurmctld) file="$CTLD_PID" ;; slurmd) file="$SLURMD_PID" ;; esac
    if pid_alive "$file" "$name"; then echo "$name: running (pid $(cat "$file"))"; else echo "$name: not running"; fi
  done
  if cluster_up; then
    echo "cluster: up; node $(node_name) $(node_state); partitions: $(sinfo -h -o %P | tr '\n' ' ')"
    return 0
  fi
  echo "cluster: down"
  return 1
}

case "${1:-}" in
  start)
    FORCE=0
    [ "${2:-}" = "--force" ] && FORCE=1
    take_lock
    cmd_start
    ;;
  stop)
    take_lock
    cmd_stop
    ;;
  status) cmd_status ;;
  *)
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
