# bench/lib.sh: shared helpers of bench/run, bench/etcd and bench/consul (sourced, not run): servers on
# free loopback ports that are always stopped, bounded client runs measured with GNU time,
# the Node clients installed on demand, and the sampling of RSS and TCP connections.
# The drivers set prog, cmd, writer_cmd and results; the helpers set variables the drivers read.
# shellcheck shell=bash disable=SC2034,SC2154

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bench=$top/bench
build=$bench/.build
ETCD_BIN=${ETCD_BIN:-/usr/bin/etcd}
CONSUL_BIN=${CONSUL_BIN:-$top/.deps/consul-1.8/consul}
CLIENT_TIMEOUT=${CLIENT_TIMEOUT:-300} # seconds, hard bound on any one client run
# Prepended to coord's module path: lets a run use clients that live in another checkout.
COORD_LUA_PATH=${COORD_LUA_PATH:-}

die() { echo "$prog: $*" >&2; exit 1; }
note() { echo "$prog: $*" >&2; }
posint() { [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'"; }
poslist() { [[ $2 =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "$1 must be a comma-separated list of positive integers, got '$2'"; }

# --- process bookkeeping: everything started here is stopped on exit ---------
tmp=
pids=()      # servers, stopped in reverse order
client_pid=  # the client run in flight

alive() { # PID: running and not a zombie
  local st
  st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "${st%% *}" != Z ]
}

stop_pid() { # PID: TERM, up to 10 s, then KILL; reap it
  local pid=$1 i
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    alive "$pid" || break
    sleep 0.1
  done
  if alive "$pid"; then
    note "pid $pid did not stop on TERM, killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

stop_server() { # PID: stop it and forget it
  local pid=$1 i
  stop_pid "$pid"
  for i in "${!pids[@]}"; do
    [ "${pids[i]}" = "$pid" ] && unset 'pids[i]'
  done
  return 0
}

cleanup() {
  local rc=$? i
  trap '' INT TERM HUP
  exec 4>&- 2>/dev/null || true
  # timeout(1) forwards TERM to the client's whole process group.
  [ -z "$client_pid" ] || stop_pid "$client_pid"
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    [ -z "${pids[i]-}" ] || stop_pid "${pids[i]}"
  done
  [ -z "$tmp" ] || rm -rf "$tmp"
  exit "$rc"
}

# setup [TOOL...]: traps, dependencies, GNU time (installed when missing), the tools every
# driver needs and the TOOLs this one needs too, the build and temp folders.
setup() {
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
  "$top/.ci/deps"
  need_tool /usr/bin/time time "GNU time"
  for tool in wrk lua5.4 gcc timeout base64 "$@"; do
    command -v "$tool" >/dev/null || die "$tool not found"
  done
  mkdir -p "$build"
  tmp=$(mktemp -d -t coord-bench.XXXXXX)
}

# need_tool TOOL PACKAGE [WHAT]: installs the Debian PACKAGE (needs root) when TOOL is not found.
need_tool() {
  command -v "$1" >/dev/null && return 0
  note "installing ${3:-$1} (Debian package '$2')"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "$2" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }
}

# driver_flag ARGS...: the flags bench/etcd and bench/consul share (--n --c --runs --duration --w
# --skip-kv --skip-watch): sets n c runs duration wlist do_kv do_watch, and flag_shift to the
# count of arguments taken (0 when $1 is none of these).
driver_flag() {
  flag_shift=0
  case $1 in
    --n|--c|--runs|--duration) [ $# -ge 2 ] || usage; posint "$1" "$2"; printf -v "${1#--}" %s "$2"; flag_shift=2 ;;
    --w) [ $# -ge 2 ] || usage; poslist --w "$2"; wlist=$2; flag_shift=2 ;;
    --skip-kv) do_kv=0; flag_shift=1 ;;
    --skip-watch) do_watch=0; flag_shift=1 ;;
  esac
}

# driver_setup MODULE: setup for bench/etcd and bench/consul (they also need the Node clients),
# bare built; sets node_skip and coord_skip (why those rows are skipped; MODULE must load) and
# warns when either is set.
driver_setup() {
  setup node npm ss openssl
  build_bare
  node_skip=
  node_deps || node_skip="npm ci failed (log: $build/npm.log)"
  coord_skip=$(coord_ready "$1") || true
  [ -z "$coord_skip" ] || note "WARNING: skipping the coord rows: $coord_skip"
  [ -z "$node_skip" ] || note "WARNING: skipping the node rows: $node_skip"
}

# --- builds ------------------------------------------------------------------
build_bare() {
  gcc -O2 -Wall -Wextra -Werror "$bench/bare.c" -o "$build/bare" -luv -lcurl
}

# node_deps: the npm clients under bench/node_modules, from the lock file.
node_deps() {
  if [ ! -d "$bench/node_modules/etcd3" ] || [ ! -d "$bench/node_modules/consul" ] ||
     [ "$bench/package-lock.json" -nt "$bench/node_modules/.package-lock.json" ]; then
    note "installing the Node clients (npm ci in bench/)"
    (cd "$bench" && npm ci --no-audit --no-fund --loglevel=error >"$build/npm.log" 2>&1) || {
      tail -n 5 "$build/npm.log" >&2
      return 1
    }
  fi
}

# coord_ready MODULE: builds coord and checks that MODULE loads; else prints why not.
coord_ready() {
  if ! make -C "$top" build >"$build/make.log" 2>&1; then
    echo "make build failed (log: $build/make.log)"
    return 1
  fi
  local why
  if ! why=$(coord_lua -e "require '$1'" 2>&1); then
    if grep -q "module '$1' not found" <<<"$why"; then echo "$1 is not in this checkout yet"
    else echo "$1 does not load: $(head -n1 <<<"$why")"; fi
    return 1
  fi
}

coord_lua() {
  LUA_PATH="$COORD_LUA_PATH$top/lua/?.lua;$top/lua/?/init.lua;;" LUA_CPATH="$top/?.so;;" lua5.4 "$@"
}

# --- HTTP without curl -------------------------------------------------------
# http METHOD PORT PATH [BODY]: one HTTP/1.0 request to 127.0.0.1 with bash's
# /dev/tcp; prints the body, succeeds on status 200.
http() {
  local resp status
  # shellcheck disable=SC2016 # the inner script expands its own arguments
  resp=$(LC_ALL=C timeout 5 bash -c '
      exec 3<>"/dev/tcp/127.0.0.1/$2" || exit 1
      printf "%s %s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\nContent-Type: application/json\r\nContent-Length: %s\r\n\r\n%s" \
        "$1" "$3" "$2" "${#4}" "$4" >&3
      cat <&3' http "$1" "$2" "$3" "${4-}" 2>/dev/null) || return 1
  status=${resp%%$'\r'*}
  printf '%s' "${resp#*$'\r\n\r\n'}"
  [[ $status == HTTP/1.?" 200"* ]]
}

# pick_port VAR: a port in 20000-31999 (below Linux's ephemeral range) that
# nothing listens on and that this script has not handed out yet.
picked=" "
pick_port() {
  local p i
  for ((i = 0; i < 500; i++)); do
    p=$((20000 + RANDOM % 12000))
    case $picked in *" $p "*) continue ;; esac
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue # TCP listener
    if command -v ss >/dev/null && [ -n "$(ss -Htuln "sport = :$p" 2>/dev/null)" ]; then
      continue # UDP (Consul's serf ports are TCP and UDP)
    fi
    picked+="$p "
    printf -v "$1" '%s' "$p"
    return 0
  done
  die "no free port found"
}

# wait_ready NAME PID CHECK: until CHECK succeeds, PID dies or 30 s pass.
wait_ready() {
  local name=$1 pid=$2 check=$3 deadline=$((SECONDS + 30))
  while ((SECONDS < deadline)); do
    alive "$pid" || { note "$name exited during start-up"; return 1; }
    "$check" && return 0
    sleep 0.2
  done
  note "$name did not become ready within 30 s"
  return 1
}

# started NAME PID: waits for server NAME (NAME_ready, log $tmp/NAME.log); when it does not get
# ready, shows the end of its log, stops it and fails.
started() {
  wait_ready "$1" "$2" "$1_ready" && return 0
  tail -n 5 "$tmp/$1.log" | sed "s/^/  $1: /" >&2
  stop_server "$2"
  return 1
}

# certs DIR: a throwaway CA, a server and a client certificate for 127.0.0.1 (as spec/servers.lua).
certs() {
  local d=$1 n
  mkdir -p "$d"
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' >"$d/ext.cnf"
  {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
      -subj /CN=coord-bench-ca -keyout "$d/ca.key" -out "$d/ca.pem"
    for n in server client; do
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$n" \
        -keyout "$d/$n.key" -out "$d/$n.csr"
      openssl x509 -req -in "$d/$n.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
        -extfile "$d/ext.cnf" -out "$d/$n.pem"
    done
  } >"$d/openssl.log" 2>&1 || { cat "$d/openssl.log" >&2; die "openssl failed"; }
}

# --- etcd --------------------------------------------------------------------
etcd_port=
etcd_pid=
etcd_tls=   # a certs() folder when the member speaks TLS
etcd_ready() {
  if [ -n "$etcd_tls" ]; then
    ETCDCTL_API=3 timeout 5 etcdctl --endpoints "https://127.0.0.1:$etcd_port" --cacert "$etcd_tls/ca.pem" \
      --cert "$etcd_tls/client.pem" --key "$etcd_tls/client.key" endpoint health >/dev/null 2>&1
  else
    http GET "$etcd_port" /health | grep -q '"health":"true"'
  fi
}

# start_etcd [CERTS-DIR [any]]: a fresh single member (new data dir); sets etcd_port, etcd_pid,
# etcd_url. With CERTS-DIR it speaks TLS and requires client certificates, unless "any" follows.
start_etcd() {
  local peer scheme=http tlsargs=()
  etcd_tls=${1-}
  if [ -n "$etcd_tls" ]; then
    scheme=https
    tlsargs=(--cert-file "$etcd_tls/server.pem" --key-file "$etcd_tls/server.key")
    # etcd 3.4 asks for client certificates whenever it has a trusted CA, even without
    # --client-cert-auth: "any" leaves both out.
    [ "${2-}" = any ] || tlsargs+=(--trusted-ca-file "$etcd_tls/ca.pem" --client-cert-auth)
  fi
  for _ in 1 2 3; do
    pick_port etcd_port
    pick_port peer
    rm -rf "$tmp/etcd-data"
    "$ETCD_BIN" --name bench --data-dir "$tmp/etcd-data" \
      --listen-client-urls "$scheme://127.0.0.1:$etcd_port" \
      --advertise-client-urls "$scheme://127.0.0.1:$etcd_port" \
      --listen-peer-urls "http://127.0.0.1:$peer" \
      --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
      --initial-cluster "bench=http://127.0.0.1:$peer" "${tlsargs[@]}" \
      >"$tmp/etcd.log" 2>&1 </dev/null &
    etcd_pid=$!
    pids+=("$etcd_pid")
    etcd_url="$scheme://127.0.0.1:$etcd_port"
    started etcd "$etcd_pid" && return 0
    etcd_pid=
  done
  die "could not start etcd"
}

# --- consul ------------------------------------------------------------------
consul_port=
consul_pid=
consul_ready() {
  local leader
  leader=$(http GET "$consul_port" /v1/status/leader) || return 1
  [ -n "$leader" ] && [ "$leader" != '""' ]
}

# start_consul [HCL]: a fresh dev agent; sets consul_port, consul_pid.
start_consul() {
  local lan wan server hcl=()
  [ -z "${1-}" ] || hcl=(-hcl "$1")
  for _ in 1 2 3; do
    pick_port consul_port
    pick_port lan
    pick_port wan
    pick_port server
    rm -rf "$tmp/consul-data"
    CHECKPOINT_DISABLE=1 "$CONSUL_BIN" agent -dev -bind 127.0.0.1 -client 127.0.0.1 \
      -http-port "$consul_port" -dns-port -1 -grpc-port -1 \
      -serf-lan-port "$lan" -serf-wan-port "$wan" -server-port "$server" "${hcl[@]}" \
      -data-dir "$tmp/consul-data" >"$tmp/consul.log" 2>&1 </dev/null &
    consul_pid=$!
    pids+=("$consul_pid")
    started consul "$consul_pid" && return 0
    consul_pid=
  done
  die "could not start consul"
}

# put_key PORT KEY VALUE: a PUT that a fresh dev agent may refuse for a moment.
put_key() {
  local i
  for ((i = 0; i < 25; i++)); do
    [ "$(http PUT "$1" "/v1/kv/$2" "$3")" = true ] && return 0
    sleep 0.2
  done
  die "consul: put of $2 failed"
}

# --- measuring -----------------------------------------------------------------
# measure OUT CMD...: run one client under timeout and GNU time, wait for it. Leaves
# OUT.out, OUT.err, OUT.time (last line: user sys maxrss-KiB elapsed); sets m_rc.
measure() {
  local out=$1
  shift
  m_rc=0
  timeout -k 10 "$CLIENT_TIMEOUT" /usr/bin/time -f '%U %S %M %e' -o "$out.time" "$@" \
    >"$out.out" 2>"$out.err" </dev/null &
  client_pid=$!
  wait "$client_pid" || m_rc=$?
  client_pid=
}

# result_line OUT CLIENT: parses a finished run into r_reqs r_errs r_wall r_cpu r_rss (KiB) or r_why.
# Clients print "requests=<n> errors=<e> seconds=<wall> [cpu_before=<s>]" (wrk: its own report).
result_line() {
  local out=$1 cl=$2 line user sys rss
  r_reqs='' r_errs='' r_wall='' r_cpu='' r_rss='' r_why='' r_before='' r_warm=0
  if [ "$cl" = h2load ]; then
    # "finished in 228.60ms, ...", "requests: 1000 total, ...", "status codes: 1000 2xx, ...",
    # "traffic: ... total, ... headers (...), 155.27KB (159000) data". A gRPC error reply is
    # trailers only (HTTP 200, no message), so a reply counts as good only while the data bytes
    # give it at least 20 (a Range reply is 159 bytes, a Put reply 34).
    read -r r_reqs r_wall r_errs < <(awk '
      /^finished in / { d = $3; sub(/,$/, "", d)
                        if (d ~ /ms$/) d = d / 1000; else if (d ~ /us$/) d = d / 1e6; else d = d + 0 }
      /^requests: / { n = $2 }
      /^status codes: / { ok = $3 + 0 }
      /^traffic: / { for (i = 2; i <= NF; i++) if ($(i + 1) == "data") { b = $i; gsub(/[()]/, "", b) } }
      END { if (n != "" && d != "") { g = int(b / 20); if (g > ok) g = ok; print n, d, n - g } }' "$out.out") || true
  elif [ "$cl" = wrk ]; then
    # "  126506 requests in 5.00s, 60.68MB read"; error lines only when non-zero
    read -r r_reqs r_wall r_errs < <(awk '
      / requests in / { n = $1; d = $4; sub(/,$/, "", d)
                        if (d ~ /ms$/) d = d / 1000; else if (d ~ /m$/) d = d * 60; else d = d + 0 }
      /Non-2xx or 3xx responses:/ { e += $NF }
      /Socket errors:/ { for (i = 3; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) e += $i + 0 }
      END { if (n != "") print n, d, e + 0 }' "$out.out") || true
  else
    line=$(grep -E '^requests=[0-9]+ ' "$out.out" | tail -n1 || true)
    if [ -n "$line" ]; then
      r_reqs=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
      r_errs=$(sed -nE 's/.*errors=([0-9]+).*/\1/p' <<<"$line")
      r_wall=$(sed -nE 's/.* seconds=([0-9.eE+-]+).*/\1/p' <<<"$line")
      r_before=$(sed -nE 's/.*cpu_before=([0-9.eE+-]+).*/\1/p' <<<"$line")
      r_warm=$(sed -nE 's/.* warmup=([0-9]+).*/\1/p' <<<"$line")
      r_warm=${r_warm:-0}
    fi
  fi
  read -r user sys rss _ < <(tail -n1 "$out.time" 2>/dev/null) || true
  if [ "$m_rc" = 124 ] || [ "$m_rc" = 137 ]; then
    r_why="timed out after ${CLIENT_TIMEOUT}s"
  elif [ -z "$r_reqs" ] || [ -z "$r_errs" ] || [ -z "$r_wall" ] || [ "$r_reqs" = 0 ]; then
    r_why="no result line (exit status $m_rc)"
  elif ! [[ ${user-} =~ ^[0-9.]+$ && ${sys-} =~ ^[0-9.]+$ && ${rss-} =~ ^[0-9]+$ ]]; then
    r_why="no GNU time output"
  else
    # CPU spent before the timed loop (start-up, module loading, connecting, warm-up) is left out
    # when the client reports it (cpu_before=).
    r_cpu=$(awk -v u="$user" -v s="$sys" -v b="${r_before:-0}" 'BEGIN { c = u + s - b; printf "%.3f", (c > 0 ? c : 0) }')
    r_rss=$rss
  fi
}

# server_ticks PID: the CPU time (utime + stime, fields 14 and 15 of /proc/PID/stat) of PID in
# clock ticks.
server_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
clk_tck=$(getconf CLK_TCK)

# kv_measure OP CLIENT RUN OUT [LABEL FAIL-LABEL]: runs the command in the array cmd (see measure),
# prints one line and appends to $results: op client run ok|fail reqs errs wall cpu rss-KiB why
# [server-cpu warmup]. The line starts with LABEL (FAIL-LABEL when the run failed), by default
# "OP CLIENT run RUN:". When server_pid is set, that server's CPU seconds over the run are
# sampled around it (server-cpu) and shown per request served (the run's requests plus its
# warm-up calls, warmup=).
kv_measure() {
  local op=$1 cl=$2 r=$3 out=$4 label fail_label s0='' srv=''
  printf -v label '%-8s %-6s run %d:' "$op" "$cl" "$r"
  label=${5-$label}
  fail_label=${6-$label}
  [ -z "${server_pid-}" ] || s0=$(server_ticks "$server_pid")
  measure "$out" "${cmd[@]}"
  [ -z "$s0" ] || srv=$(awk -v a="$s0" -v b="$(server_ticks "$server_pid")" -v t="$clk_tck" 'BEGIN { printf "%.3f", (b - a) / t }')
  result_line "$out" "$cl"
  if [ -n "$r_why" ]; then
    printf '  %s FAILED: %s\n' "$fail_label" "$r_why"
    tail -n 5 "$out.err" "$out.out" 2>/dev/null | sed 's/^/      /'
    printf '%s\t%s\t%d\tfail\t0\t0\t0\t0\t0\t%s\n' "$op" "$cl" "$r" "$r_why" >>"$results"
    return
  fi
  awk -v label="$label" -v r="$r_reqs" -v e="$r_errs" -v w="$r_wall" -v cpu="$r_cpu" -v rss="$r_rss" \
      -v srv="$srv" -v warm="$r_warm" 'BEGIN {
    printf "  %s %8.0f req/s %7.1f us/req %6.1f MiB  errors %d", label, r / w, cpu * 1e6 / r, rss / 1024, e
    if (srv != "") printf "  server %.1f us/req", srv * 1e6 / (r + warm)
    print "" }'
  if [ "$r_errs" != 0 ]; then
    tail -n 3 "$out.err" 2>/dev/null | sed 's/^/      /'
  fi
  if [ -n "$srv" ]; then
    printf '%s\t%s\t%d\tok\t%s\t%s\t%s\t%s\t%s\t\t%s\t%s\n' "$op" "$cl" "$r" "$r_reqs" "$r_errs" "$r_wall" "$r_cpu" "$r_rss" \
      "$srv" "$r_warm" >>"$results"
  else
    printf '%s\t%s\t%d\tok\t%s\t%s\t%s\t%s\t%s\t\n' "$op" "$cl" "$r" "$r_reqs" "$r_errs" "$r_wall" "$r_cpu" "$r_rss" >>"$results"
  fi
}

# results_awk: the start of an awk program (run with -F '\t') over $results. It reads every row
# into ops[1..nops] (in order of appearance) and, per op SUBSEP client, skip (why), fail and cnt
# (runs), errs (sum), rps us rss [k, run], and where the server was sampled nsrv (runs) and srv
# (server µs per request served) tot (client + server) [k, run]; medians(op, clients) sets m_rps
# m_us m_rss (and m_srv m_tot when every run has them) of each client of the space-separated
# list that has runs. The caller adds its END block.
# shellcheck disable=SC2016 # awk's fields, not the shell's
results_awk='
  function median(a, k, n,    i, j, t, v) {
    for (i = 1; i <= n; i++) v[i] = a[k, i]
    for (i = 2; i <= n; i++) { t = v[i]; for (j = i - 1; j >= 1 && v[j] > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
    return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
  }
  function medians(op, clients,    cl, ci, nc, k) {
    nc = split(clients, cl, " ")
    for (ci = 1; ci <= nc; ci++) {
      k = op SUBSEP cl[ci]
      if (cnt[k] > 0) { m_rps[k] = median(rps, k, cnt[k]); m_us[k] = median(us, k, cnt[k]); m_rss[k] = median(rss, k, cnt[k]) }
      if (cnt[k] > 0 && nsrv[k] == cnt[k]) { m_srv[k] = median(srv, k, cnt[k]); m_tot[k] = median(tot, k, cnt[k]) }
    }
  }
  {
    if (!($1 in seen)) { seen[$1] = 1; ops[++nops] = $1 }
    k = $1 SUBSEP $2
    if ($4 == "skip") { skip[k] = $10; next }
    if ($4 != "ok") { fail[k]++; next }
    i = ++cnt[k]
    rps[k, i] = $5 / $7; us[k, i] = $8 * 1e6 / $5; rss[k, i] = $9 / 1024; errs[k] += $6
    if ($11 != "") { has_srv = 1; nsrv[k]++; srv[k, i] = $11 * 1e6 / ($5 + $12); tot[k, i] = us[k, i] + srv[k, i] }
  }'

# kv_report CLIENTS REF: medians per op and client from $results, with ratios of CPU per request
# to the clients named REF (space-separated, e.g. "bare node"), and, when the server was sampled,
# its CPU per request served and client + server. On stderr: "MEDIAN op client us [srv tot]".
kv_report() {
  awk -F '\t' -v clients="$1" -v refs="$2" "$results_awk"'
    END {
      nc = split(clients, cls, " "); nr = split(refs, rf, " ")
      for (o = 1; o <= nops; o++) {
        op = ops[o]
        medians(op, clients)
        printf "%s (medians)\n", op
        hdr = "  client |    req/s | CPU µs/req | CPU ms/1000 req | peak RSS MiB"
        sep = "  -------+----------+------------+-----------------+-------------"
        if (has_srv) { hdr = hdr " | server µs/req | client+server µs/req"; sep = sep "-+---------------+---------------------" }
        for (j = 1; j <= nr; j++) { hdr = hdr sprintf(" | %8s", "vs " rf[j]); sep = sep "-+---------" }
        print hdr " | errors | runs ok"; print sep "-+--------+--------"
        for (ci = 1; ci <= nc; ci++) {
          cl = cls[ci]; k = op SUBSEP cl
          if (k in skip) { printf "  %-6s | skipped: %s\n", cl, skip[k]; continue }
          if (cnt[k] == 0) { if (fail[k]) printf "  %-6s | FAILED in all %d runs\n", cl, fail[k]; continue }
          line = sprintf("  %-6s | %8.0f | %10.1f | %15.1f | %12.1f", cl, m_rps[k], m_us[k], m_us[k], m_rss[k])
          if (has_srv) line = line ((k in m_srv) ? sprintf(" | %13.1f | %20.1f", m_srv[k], m_tot[k]) : sprintf(" | %13s | %20s", "-", "-"))
          for (j = 1; j <= nr; j++) {
            rk = op SUBSEP rf[j]
            line = line sprintf(" | %8s", cnt[rk] > 0 ? sprintf("%.2fx", m_us[k] / m_us[rk]) : "-")
          }
          printf "%s | %6d | %d/%d\n", line, errs[k], cnt[k], cnt[k] + fail[k]
        }
        print ""
        for (ci = 1; ci <= nc; ci++) {
          k = op SUBSEP cls[ci]
          if (cnt[k] > 0) print "MEDIAN", op, cls[ci], m_us[k], ((k in m_srv) ? m_srv[k] " " m_tot[k] : "") > "/dev/stderr"
        }
      }
    }' "$results"
}

# keep_medians NAME: appends this run's "MEDIAN op client us ..." lines, each prefixed by NAME, to
# the file $BENCH_MEDIANS when it is set (bench/run gets collects them across its runs).
keep_medians() {
  [ -z "${BENCH_MEDIANS-}" ] || sed "s/^/$1 /" "$tmp/medians" >>"$BENCH_MEDIANS"
}

# --- sampling while a client holds its watches ---------------------------------
rss_kib() { # PID: VmRSS in KiB (0 if gone)
  awk '/^VmRSS:/ { print $2; found = 1 } END { if (!found) print 0 }' "/proc/$1/status" 2>/dev/null || echo 0
}

# conns PORT: the watch client's established TCP connections to PORT (counted on the client's side:
# etcd's gateway holds a connection to its own port, which is not the client's).
conns() {
  local leaf
  leaf=$(client_leaf "$client_pid")
  ss -Htnp state established "( dport = :$1 )" 2>/dev/null | grep -c "pid=$leaf," || true
}

# client_leaf PID: the deepest single-child descendant (timeout -> time -> the client).
client_leaf() {
  local p=$1 kids i
  for ((i = 0; i < 5; i++)); do
    read -r -a kids <"/proc/$p/task/$p/children" 2>/dev/null || true
    [ "${#kids[@]}" -eq 1 ] || break
    p=${kids[0]}
  done
  echo "$p"
}

# watch_run OUT SERVER-PID PORT BOUND CMD...: starts a watch client with a pipe on its stdin and
# waits (at most BOUND s per phase) for its "watching" line, then runs the command in the array
# writer_cmd (the puts the watches wait for, from a process of its own), then waits for the
# client's "ready" line; meanwhile it samples the connections on PORT. While the client holds its
# watches it samples the client's and the server's RSS and the connections once more, then closes
# the pipe (the client exits) and waits for it. Connections are the client process's own. Sets w_server0 w_server1 (KiB) w_client (KiB)
# w_conns w_conns_peak w_ready (1/0) w_why (what failed) and m_rc; OUT.time holds GNU time's line.
watch_run() {
  local out=$1 spid=$2 port=$3 bound=$4 leaf phase
  shift 4
  w_server0=$(rss_kib "$spid") w_server1=0 w_client=0 w_conns=0 w_conns_peak=0 w_ready=0 w_why='' m_rc=0
  rm -f "$tmp/fifo" && mkfifo "$tmp/fifo"
  timeout -k 10 "$CLIENT_TIMEOUT" /usr/bin/time -f '%U %S %M %e' -o "$out.time" "$@" \
    >"$out.out" 2>"$out.err" <"$tmp/fifo" &
  client_pid=$!
  exec 4<>"$tmp/fifo"
  for phase in watching ready; do
    if ! await_line "$out.out" "$phase" "$port" "$bound"; then
      w_why="no '$phase' line from the client within ${bound}s"
      alive "$client_pid" || w_why="the client exited before its '$phase' line"
      break
    fi
    if [ "$phase" = watching ] && ! timeout 120 "${writer_cmd[@]}" >"$out.writer" 2>&1; then
      w_why="the writer failed: $(tail -n 2 "$out.writer" | tr '\n' ' ')"
      break
    fi
    [ "$phase" = ready ] && w_ready=1
  done
  if ((w_ready)); then
    sleep 1 # let the streams settle after the last event
    leaf=$(client_leaf "$client_pid")
    w_client=$(rss_kib "$leaf")
    w_server1=$(rss_kib "$spid")
    w_conns=$(conns "$port")
    ((w_conns > w_conns_peak)) && w_conns_peak=$w_conns
  fi
  exec 4>&-
  local deadline=$((SECONDS + 30))
  while ((SECONDS < deadline)) && alive "$client_pid"; do sleep 0.1; done
  if alive "$client_pid"; then
    note "watch client did not exit 30 s after its stdin closed"
    stop_pid "$client_pid"
  fi
  wait "$client_pid" || m_rc=$?
  client_pid=
}

# watch_record TP W CL OUT LABEL FIRST SERVER: after watch_run of CL with W watches over transport
# TP, parses the client's "watches=... events=E errors=N create_seconds=S events_seconds=S" line
# and GNU time's peak RSS; appends to $wres "TP W CL ok events errors create-s events-s client-KiB
# peak-KiB server-growth-KiB conns peak-conns" (or "TP W CL fail why") and prints one line that
# starts with LABEL, FIRST naming the phase that creates the watches and SERVER the server.
watch_record() {
  local tp=$1 w=$2 cl=$3 out=$4 label=$5 first=$6 server=$7 line peak events errs cs es why
  line=$(grep -E '^watches=' "$out.out" | tail -n1 || true)
  read -r _ _ peak _ < <(tail -n1 "$out.time" 2>/dev/null) || true
  if ((w_ready)) && [ -n "$line" ]; then
    events=$(sed -nE 's/.*events=([0-9]+).*/\1/p' <<<"$line")
    errs=$(sed -nE 's/.* errors=([0-9]+).*/\1/p' <<<"$line")
    cs=$(sed -nE 's/.*create_seconds=([0-9.]+).*/\1/p' <<<"$line")
    es=$(sed -nE 's/.*events_seconds=([0-9.]+).*/\1/p' <<<"$line")
    printf '%s\t%s\t%s\tok\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tp" "$w" "$cl" "$events" "$errs" "$cs" "$es" \
      "$w_client" "${peak:-0}" "$((w_server1 - w_server0))" "$w_conns" "$w_conns_peak" >>"$wres"
    printf '  %s events %s/%s errors %s, %s %ss, deliver %ss, client RSS %s MiB, %s +%s MiB, conns %s (peak %s)\n' \
      "$label" "$events" "$w" "$errs" "$first" "$cs" "$es" "$((w_client / 1024))" "$server" \
      "$(((w_server1 - w_server0) / 1024))" "$w_conns" "$w_conns_peak"
  else
    why="${w_why:-no result line} (exit status $m_rc)"
    printf '%s\t%s\t%s\tfail\t%s\n' "$tp" "$w" "$cl" "$why" >>"$wres"
    printf '  %s FAILED: %s\n' "$label" "$why"
    tail -n 5 "$out.err" "$out.out" 2>/dev/null | sed 's/^/      /'
  fi
  ! grep -q . "$out.err" 2>/dev/null || tail -n 2 "$out.err" | sed 's/^/      stderr: /'
}

# await_line FILE LINE PORT BOUND: until FILE has LINE on a line of its own, the client ends or
# BOUND seconds pass; samples the connections on PORT into w_conns_peak meanwhile.
await_line() {
  local file=$1 want=$2 port=$3 deadline=$((SECONDS + $4)) c
  while ((SECONDS < deadline)) && alive "$client_pid"; do
    c=$(conns "$port")
    ((c > w_conns_peak)) && w_conns_peak=$c
    grep -qx "$want" "$file" 2>/dev/null && return 0
    sleep 0.25
  done
  grep -qx "$want" "$file" 2>/dev/null
}
