# shellcheck shell=bash disable=SC2034
# Shared helpers for the appmon test-rig scripts. Source it; do not run it.
#
# Rig layout (APPMON_RIG_DIR, default /var/tmp/appmon-rig), kept between runs so repeated set-ups
# are fast:
#   kernel/   unpacked Debian guest kernels; kernel/current -> the one in use
#   tools/    vhost-device-vsock (cargo install --root)
#   run/      pid files of daemons the rig started; run/t/ per-test dirs of the VM tests
#   logs/     libvirtd and build logs
#   images/   guest initramfs images (APPMON_GUEST_IMAGE overrides the image path: one per checkout)

# Used by the scripts that source this file (hence SC2034 above).
APPMON_RIG_DIR=${APPMON_RIG_DIR:-/var/tmp/appmon-rig}
RIG=$APPMON_RIG_DIR
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LIBVIRT_URI=qemu:///system
LIBVIRTD_PIDFILE=$RIG/run/libvirtd.pid
LIBVIRTD_LOG=$RIG/logs/libvirtd.log
VHOST_DEVICE_VSOCK=$RIG/tools/bin/vhost-device-vsock
VHOST_DEVICE_VSOCK_VERSION=0.3.0
GUEST_IMAGE=${APPMON_GUEST_IMAGE:-$RIG/images/appmon-guest.cpio.gz}
SCRIPT_NAME=${SCRIPT_NAME:-$(basename "$0")}

log() { printf '[%s] %s\n' "$SCRIPT_NAME" "$*" >&2; }
die() {
  printf '[%s] ERROR: %s\n' "$SCRIPT_NAME" "$*" >&2
  exit 1
}

need_root() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (installs packages, writes /etc/libvirt/qemu.conf, starts libvirtd)"
}

rig_dirs() {
  mkdir -p "$RIG"/{kernel,tools,run,run/t,logs,images} || die "cannot create rig directories under $RIG"
}

# pid_is PID COMM: true when PID is alive and its command name is COMM. A pid file alone is not
# enough: after a reboot or a crash the number may belong to an unrelated process.
pid_is() {
  local pid=$1 comm=$2
  proc_alive "$pid" || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ]
}

# read_pidfile FILE: prints the pid in FILE, or nothing when FILE is missing or holds no number.
read_pidfile() {
  local f=$1 pid=""
  if [ -f "$f" ]; then read -r pid <"$f" || true; fi
  if [[ $pid =~ ^[0-9]+$ ]]; then printf '%s\n' "$pid"; fi
}

# wait_until SECONDS WHAT CMD...: polls CMD every 0.1 s; fails naming WHAT after SECONDS.
wait_until() {
  local secs=$1 what=$2
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "timed out after ${secs}s waiting for: $what"
      return 1
    fi
    sleep 0.1
  done
}

virsh_answers() { virsh -c "$LIBVIRT_URI" version >/dev/null 2>&1; }

# libvirtd_pid: the pid of the libvirtd this rig started, or nothing.
libvirtd_pid() {
  local pid
  pid=$(read_pidfile "$LIBVIRTD_PIDFILE")
  if [ -n "$pid" ] && pid_is "$pid" libvirtd; then
    printf '%s\n' "$pid"
  fi
}

# stop_pid PID COMM SECONDS: SIGTERM, bounded wait, then SIGKILL. Only for pids the rig recorded.
stop_pid() {
  local pid=$1 comm=$2 secs=$3
  pid_is "$pid" "$comm" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_until "$secs" "$comm (pid $pid) to exit" proc_gone "$pid"; then
    log "$comm (pid $pid) ignored SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_until 5 "$comm (pid $pid) to die" proc_gone "$pid" ||
      die "$comm (pid $pid) survived SIGKILL"
  fi
}

# is_static FILE: true for a statically linked executable. (Output is captured first: under
# pipefail, `ldd | grep -q` fails whenever grep stops reading early.)
is_static() {
  local out
  out=$(ldd "$1" 2>&1 || true)
  [[ $out == *"not a dynamic executable"* || $out == *"statically linked"* ]]
}

# deb_installed PACKAGE: true when the Debian package is installed.
deb_installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

# kernel_dir: the unpacked guest kernel in use (contains boot/ and lib/modules/).
kernel_dir() { printf '%s\n' "$RIG/kernel/current"; }

# kernel_release: the kernel release string of the unpacked guest kernel (e.g. 6.1.0-56-amd64).
kernel_release() {
  local d
  d=$(kernel_dir)
  [ -d "$d/lib/modules" ] || die "no guest kernel under $d (run scripts/setup)"
  local rels=("$d"/lib/modules/*)
  if [ ${#rels[@]} -ne 1 ] || [ ! -d "${rels[0]}" ]; then
    die "expected exactly one kernel release under $d/lib/modules, found: ${rels[*]}"
  fi
  basename "${rels[0]}"
}

# proc_alive PID: true for a live, non-zombie process.
proc_alive() {
  local state
  [[ $1 =~ ^[0-9]+$ ]] || return 1
  state=$(sed -n 's/.*) \(.\).*/\1/p' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# proc_gone PID: the opposite of proc_alive (a zombie counts as gone: it no longer runs).
proc_gone() { ! proc_alive "$1"; }

# runs_for PID PROGRAM FILE: true when PID runs PROGRAM (its argv[0] ends with it) with FILE among
# its arguments: a recorded pid that still belongs to what recorded it, not a reused number.
runs_for() {
  local pid=$1 program=$2 file=$3 args
  proc_alive "$pid" || return 1
  args=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $(head -n1 <<<"$args") == *"$program" ]] && grep -qxF "$file" <<<"$args"
}

# sweep_test_leftovers remove|--dry-run: finds what VM test processes that are gone left behind:
# their domains (appmon-t-<test>-<pid>-<n>), their vhost-device-vsock and appmon-host processes
# (by the pid recorded in their directory, only if its command line names that directory's socket
# or host.toml) and their directories under $RIG/run/t. Removes them with "remove"; only lists
# them with --dry-run. Returns 0 when nothing was found. The same rules as
# vm-tests/src/sweep.rs, which runs before each test process's first VM or host agent.
sweep_test_leftovers() {
  local dry=$1 found=0 d pid dir name vpid state spec program
  if virsh_answers; then
    while IFS= read -r d; do
      [[ $d =~ ^appmon-t-.+-([0-9]+)-[0-9]+$ ]] || continue
      pid=${BASH_REMATCH[1]}
      proc_alive "$pid" && continue
      found=1
      if [ "$dry" = --dry-run ]; then
        log "leftover domain $d (its test process $pid is gone)"
        continue
      fi
      log "removing leftover domain $d (its test process $pid is gone)"
      state=$(virsh -c "$LIBVIRT_URI" domstate "$d" 2>/dev/null || true)
      if [ "$(echo "$state" | head -n1)" != "shut off" ]; then
        virsh -c "$LIBVIRT_URI" destroy "$d" >/dev/null 2>&1 || log "cannot destroy domain $d"
      fi
      virsh -c "$LIBVIRT_URI" undefine "$d" >/dev/null 2>&1 || log "cannot undefine domain $d"
      rm -f "/var/log/libvirt/qemu/$d.log"
    done < <(virsh -c "$LIBVIRT_URI" list --all --name 2>/dev/null)
  fi
  for dir in "$RIG"/run/t/*; do
    [ -d "$dir" ] || continue
    name=${dir##*/}
    [[ $name =~ ^([0-9]+)-[0-9]+$ ]] || continue
    pid=${BASH_REMATCH[1]}
    proc_alive "$pid" && continue
    found=1
    for spec in vhost-device-vsock:vhu.sock appmon-host:host.toml; do
      program=${spec%%:*}
      vpid=$(read_pidfile "$dir/$program.pid")
      if [ -n "$vpid" ] && runs_for "$vpid" "$program" "$dir/${spec#*:}"; then
        if [ "$dry" = --dry-run ]; then
          log "leftover $program pid $vpid (of $dir)"
        else
          log "killing leftover $program pid $vpid (of $dir)"
          kill -KILL "$vpid" 2>/dev/null || true
          wait_until 10 "$program pid $vpid to exit" proc_gone "$vpid" || true
        fi
      fi
    done
    if [ "$dry" = --dry-run ]; then
      log "leftover test directory $dir"
    else
      rm -rf "$dir"
    fi
  done
  [ "$found" -eq 0 ]
}

# build_host_binaries: builds the host agent's binaries (appmon-host, appmonctl) and exports their
# paths as APPMON_HOST_BIN and APPMONCTL_BIN, which the VM tests and the demo use. Honours
# CARGO_TARGET_DIR like any cargo build.
build_host_binaries() {
  local json exe
  command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup)"
  if ! json=$(cd "$REPO_ROOT" && cargo build --locked -p appmon-host-agent --bins \
    --message-format=json-render-diagnostics); then
    die "building the host agent failed (cargo build --locked -p appmon-host-agent --bins; see the compiler output above)"
  fi
  APPMON_HOST_BIN=""
  APPMONCTL_BIN=""
  while IFS= read -r exe; do
    case ${exe##*/} in
      appmon-host) APPMON_HOST_BIN=$exe ;;
      appmonctl) APPMONCTL_BIN=$exe ;;
    esac
  done < <(grep -o '"executable":"[^"]*"' <<<"$json" | sed 's/^"executable":"//; s/"$//')
  [ -x "$APPMON_HOST_BIN" ] || die "cargo build -p appmon-host-agent --bins produced no appmon-host"
  [ -x "$APPMONCTL_BIN" ] || die "cargo build -p appmon-host-agent --bins produced no appmonctl"
  export APPMON_HOST_BIN APPMONCTL_BIN
  log "host agent: $APPMON_HOST_BIN, $APPMONCTL_BIN"
}
