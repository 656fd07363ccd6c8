# shellcheck shell=bash disable=SC2034
# Shared helpers for the appmon test-rig scripts. Source it; do not run it.
#
# Rig layout (APPMON_RIG_DIR, default /var/tmp/appmon-rig), kept between runs so repeated set-ups
# are fast:
#   kernel/   unpacked Debian guest kernels; kernel/current -> the one in use
#   tools/    vhost-device-vsock (cargo install --root)
#   run/      pid files of daemons the rig started; run/t/ per-test dirs of the VM tests
#   logs/     libvirtd and build logs
#   images/   guest initramfs images (APPMON_GUEST_IMAGE overrides the image path: one per checkout);
#             debian-12/, the cached Debian base, and the Debian disk images built from it
#             (APPMON_DEBIAN_IMAGE, default beside the initramfs image: <image>-debian.img)

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
DEBIAN_IMAGE=${APPMON_DEBIAN_IMAGE:-${GUEST_IMAGE%.cpio.gz}-debian.img}
SCRIPT_NAME=${SCRIPT_NAME:-$(basename "$0")}

# usage: prints the running script's --help, which is its header comment: the comment lines after
# the #! line up to the first line that is not a comment, without their leading "# ".
usage() { awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "$0"; }

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

# web_deps: installs the MON page's npm packages (uPlot, which host-agent/build.rs embeds, and
# puppeteer-core, which drives Chromium in the page's tests) from host-agent/web/package-lock.json
# with `npm ci --ignore-scripts`, unless the installed ones are as new as the lock file. Every
# build of the host agent needs them (scripts/setup installs npm).
web_deps() {
  local web="$REPO_ROOT/host-agent/web"
  if [ -f "$web/node_modules/.package-lock.json" ] && [ ! "$web/package-lock.json" -nt "$web/node_modules/.package-lock.json" ]; then
    return 0
  fi
  command -v npm >/dev/null || die "npm not found: scripts/setup installs it (apt-get install npm)"
  log "npm ci --ignore-scripts --prefix host-agent/web"
  npm ci --ignore-scripts --no-audit --no-fund --prefix "$web" >&2 ||
    die "npm ci --ignore-scripts --prefix host-agent/web failed (is the npm registry reachable?)"
}

# cargo_executables CARGO-BUILD-ARGS...: builds with `cargo build --locked ARGS` in the repository
# and prints the path of each executable it produced, one a line (honours CARGO_TARGET_DIR like any
# cargo build). Fails, naming the command, when the build fails.
cargo_executables() {
  local json
  command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup)"
  web_deps
  if ! json=$(cd "$REPO_ROOT" && cargo build --locked "$@" --message-format=json-render-diagnostics); then
    die "building failed (cargo build --locked $*; see the compiler output above)"
  fi
  grep -o '"executable":"[^"]*"' <<<"$json" | sed 's/^"executable":"//; s/"$//'
}

# test_sweep [--dry-run | --running]: runs appmon-test-sweep (vm-tests/src/bin/appmon-test-sweep.rs),
# the VM test harness's own removal of what dead test processes left behind: their appmon-t-*
# domains, their vhost-device-vsock and appmon-host processes (by recorded pid, only while the
# command line names the test's directory) and their directories. --dry-run only lists; --running
# lists the domains of test processes that still run. Returns its exit code: 0 nothing found,
# 1 found (and removed unless --dry-run), 3 something could not be looked at or removed.
# shellcheck disable=SC2120 # no argument: remove
test_sweep() {
  local exe
  exe=$(cargo_executables -p appmon-vm-tests --bin appmon-test-sweep | tail -n1)
  [ -x "$exe" ] || die "cargo built no appmon-test-sweep"
  "$exe" "$@"
}

# build_host_binaries: builds the host agent's binaries (appmon-host, appmonctl) and exports their
# paths as APPMON_HOST_BIN and APPMONCTL_BIN, which the VM tests and the demo use. Honours
# CARGO_TARGET_DIR like any cargo build.
build_host_binaries() {
  local exes exe
  exes=$(cargo_executables -p appmon-host-agent --bins)
  APPMON_HOST_BIN=""
  APPMONCTL_BIN=""
  while IFS= read -r exe; do
    case ${exe##*/} in
      appmon-host) APPMON_HOST_BIN=$exe ;;
      appmonctl) APPMONCTL_BIN=$exe ;;
    esac
  done <<<"$exes"
  [ -x "$APPMON_HOST_BIN" ] || die "cargo build -p appmon-host-agent --bins produced no appmon-host"
  [ -x "$APPMONCTL_BIN" ] || die "cargo build -p appmon-host-agent --bins produced no appmonctl"
  export APPMON_HOST_BIN APPMONCTL_BIN
  log "host agent: $APPMON_HOST_BIN, $APPMONCTL_BIN"
}

# build_debian_payload DIR: writes the Debian VM test's payload to DIR (emptied first): the units
# and scripts of vm-tests/debian-guest/, and vm-tests/guest-c/appmon-heartbeat.c compiled with cc
# against libappmon's header and the release libappmon.so (scripts/build-packages builds it).
build_debian_payload() {
  local dir=$1 lib=$REPO_ROOT/target/release
  [ -f "$lib/libappmon.so" ] || die "no $lib/libappmon.so (run scripts/build-packages)"
  rm -rf "$dir" && mkdir -p "$dir"
  cp -a "$REPO_ROOT/vm-tests/debian-guest/." "$dir/"
  mkdir -p "$dir/usr/local/bin"
  cc -std=c99 -D_DEFAULT_SOURCE -Wall -Wextra -Werror -o "$dir/usr/local/bin/appmon-heartbeat" \
    "$REPO_ROOT/vm-tests/guest-c/appmon-heartbeat.c" -I "$REPO_ROOT/libappmon/include" \
    -L "$lib" -lappmon || die "cc failed to build appmon-heartbeat against libappmon"
}
