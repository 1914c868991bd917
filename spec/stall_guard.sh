#!/usr/bin/env bash
# spec/stall_guard.sh SECONDS CMD [ARG...]
#
# Runs CMD (a busted run) in a session of its own and passes its output through. When that
# output has not grown for SECONDS, the run has stalled: this prints which test was running
# (spec/current_test.lua keeps it in $COORD_SPEC_CURRENT), what every Lua process of the run is
# doing (its C stacks under gdb, its kernel wait channel, its TCP sockets), then stops the whole
# session (servers the specs started included) and exits 124, so that a hang fails the run
# instead of holding it until CI's own limit.
set -uo pipefail
[ $# -ge 2 ] && [[ $1 =~ ^[1-9][0-9]*$ ]] || { sed -n '2p' "$0" >&2; exit 2; }
limit=$1
shift
log=$(mktemp -t coord-stall.XXXXXX)
current=$(mktemp -t coord-current.XXXXXX)
trap 'rm -f "$log" "$current"' EXIT
export COORD_SPEC_CURRENT=$current

setsid "$@" >"$log" 2>&1 </dev/null &
run=$!
tail -n +1 -f --pid="$run" "$log" &
follower=$!

session_pids() { ps -eo pid=,sid= | awk -v s="$run" '$2 == s { print $1 }'; }

report() {
  echo
  echo "stall_guard: no output for ${limit} s; the run is stopped ($(date -u '+%H:%M:%S UTC'))"
  sed 's/^/stall_guard: /' "$current"
  local p
  for p in $(session_pids); do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = lua5.4 ] || continue
    echo "stall_guard: process $p: $(tr '\0' ' ' <"/proc/$p/cmdline" | cut -c1-200)"
    echo "stall_guard:   wchan $(cat "/proc/$p/wchan" 2>/dev/null), state $(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)"
    ss -tanpi 2>/dev/null | grep -A1 "pid=$p," | sed 's/^/stall_guard:   /'
    if command -v gdb >/dev/null; then
      timeout 60 gdb -p "$p" -batch -ex 'thread apply all bt' 2>/dev/null | grep -E '^(#|Thread)' | sed 's/^/stall_guard:   /'
    fi
  done
}

still=0
size=-1
while kill -0 "$run" 2>/dev/null; do
  sleep 5
  now=$(stat -c %s "$log")
  if [ "$now" = "$size" ]; then still=$((still + 5)); else still=0; size=$now; fi
  if [ "$still" -ge "$limit" ]; then
    report
    for sig in TERM KILL; do
      for p in $(session_pids); do kill -"$sig" "$p" 2>/dev/null; done
      sleep 3
    done
    wait "$run" 2>/dev/null
    wait "$follower" 2>/dev/null
    exit 124
  fi
done
wait "$run"
rc=$?
wait "$follower" 2>/dev/null
exit "$rc"
