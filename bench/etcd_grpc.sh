# bench/etcd_grpc.sh: the gRPC part of bench/etcd (issue 13; sourced by bench/etcd after lib.sh,
# not run): the clients on libcurl 8.14.1, h2load and its request bodies, and the ratio lines.
# shellcheck shell=bash disable=SC2034,SC2154

grpc_skip=    # why the json8 and grpc rows are skipped
bare8_skip=   # why bare8 is
h2load_skip=  # why h2load is
curl8_version=

# grpc_setup: builds coord against libcurl 8.14.1 (build/curl8/coord/core.so) and bench/bare.c
# against it (bench/.build/bare8), installs h2load (Debian nghttp2-client) when missing, and writes
# the gRPC request bodies (for h2load and bareg) bench/.build/grpc-get.bin (RangeRequest{key}) and grpc-put.bin
# (PutRequest{key, value}), each in gRPC's 5-byte framing. Sets the *_skip variables above.
grpc_setup() {
  local curl8=$top/.deps/curl-8.14/usr arch out
  arch=$(gcc -print-multiarch)
  if ! make -C "$top" build CURL=8 >"$build/make-curl8.log" 2>&1; then
    grpc_skip="make build CURL=8 failed (log: $build/make-curl8.log)"
  elif ! out=$(LUA_PATH="$COORD_LUA_PATH$top/lua/?.lua;$top/lua/?/init.lua;;" LUA_CPATH="$top/build/curl8/?.so;;" lua5.4 -e '
        local coord = require "coord"
        require "coord.etcd"
        assert(coord.versions.libcurl:match("^8"), "coord.core is on libcurl " .. coord.versions.libcurl)
        io.write(coord.versions.libcurl)' 2>&1); then
    grpc_skip="coord.etcd on libcurl 8 does not load: $(head -n1 <<<"$out")"
  else
    curl8_version=$out
  fi
  if ! gcc -O2 -Wall -Wextra -Werror "$bench/bare.c" -o "$build/bare8" -I"$curl8/include/$arch" \
       -L"$curl8/lib/$arch" -Wl,-rpath,"$curl8/lib/$arch" -luv -lcurl 2>"$build/bare8.log"; then
    bare8_skip="bench/bare.c does not build against $curl8 (log: $build/bare8.log)"
  fi
  need_tool h2load nghttp2-client || true
  command -v h2load >/dev/null || h2load_skip="h2load not found (Debian package nghttp2-client)"
  # RangeRequest: field 1 (key) length-delimited; PutRequest: key, then field 2 (value), 100 bytes.
  printf '\0\0\0\0\x0b\x0a\x09bench-key' >"$build/grpc-get.bin"
  printf '\0\0\0\0\x71\x0a\x09bench-key\x12\x64%s' "$value" >"$build/grpc-put.bin"
  [ -z "$grpc_skip" ] || note "WARNING: skipping the json8 and grpc rows: $grpc_skip"
  [ -z "$bare8_skip" ] || note "WARNING: skipping the bare8 rows: $bare8_skip"
  [ -z "$h2load_skip" ] || note "WARNING: skipping the h2load rows: $h2load_skip"
}

# grpc_aims MEDIANS: issue 13's ratio lines from kv_report's "MEDIAN op client us [srv tot]" lines:
# coord grpc's client CPU against the bare C JSON loop on the same libcurl (aim <= 0.8x), and
# client + server CPU of coord grpc against coord json on the same libcurl (aim <= 0.5x).
grpc_aims() {
  awk '
    { us[$2, $3] = $4; if (NF >= 6) { srv[$2, $3] = $5; tot[$2, $3] = $6 }
      if (!($2 in seen)) { seen[$2] = 1; ops[++nops] = $2 } }
    function verdict(ok) { return ok ? "met" : "not met" }
    END {
      for (i = 1; i <= nops; i++) {
        op = ops[i]; g = us[op, "grpc"]
        if (g == "") continue
        b = us[op, "bare8"]
        if (b != "") printf "%s: coord grpc client %.1f us/req = %.2fx bare C JSON (bare8 %.1f)  [aim <= 0.8x bare C: %s]\n",
          op, g, g / b, b, verdict(g / b <= 0.8)
        t = tot[op, "grpc"]; j = tot[op, "json8"]
        if (t != "" && j != "") printf "%s: coord grpc client+server %.1f us/req = %.2fx coord json (json8 %.1f = %.1f client + %.1f etcd)  [aim <= 0.5x coord json: %s]\n",
          op, t, t / j, j, us[op, "json8"], srv[op, "json8"], verdict(t / j <= 0.5)
        line = sprintf("%s: etcd CPU per request: grpc %.1f us", op, srv[op, "grpc"])
        split("json8 bareg h2load node bare8 wrk", o, " ")
        for (k = 1; k <= 6; k++) if (srv[op, o[k]] != "") line = line sprintf(", %s %.1f", o[k], srv[op, o[k]])
        line = line "; client: grpc"
        if (us[op, "bareg"] != "") line = line sprintf(" %.2fx bare C gRPC (bareg %.1f),", g / us[op, "bareg"], us[op, "bareg"])
        if (us[op, "h2load"] != "") line = line sprintf(" %.1fx h2load", g / us[op, "h2load"])
        if (us[op, "node"] != "") line = line sprintf(", node etcd3 %.1fx grpc", us[op, "node"] / g)
        print line
      }
    }' "$1"
}

# grpc_watch_aims WRES: issue 13's watch line, for the grpc rows of the watch part (fields as
# watch_record writes them): client RSS < 80 MiB at 10,000 watches over TLS, one connection,
# etcd's growth no more than node etcd3's.
grpc_watch_aims() {
  awk -F '\t' '
    $4 == "ok" { rss[$1, $2, $3] = $9 / 1024; grow[$1, $2, $3] = $11 / 1024; cn[$1, $2, $3] = $12; ok[$1, $2, $3] = 1
                 if (!($1 SUBSEP $2 in seen)) { seen[$1 SUBSEP $2] = 1; keys[++nk] = $1 SUBSEP $2 } }
    function verdict(ok) { return ok ? "met" : "not met" }
    END {
      for (i = 1; i <= nk; i++) {
        split(keys[i], p, SUBSEP); t = p[1]; w = p[2]
        if (!ok[t, w, "grpc"]) continue
        printf "%s W=%s: coord grpc client RSS %.0f MiB", t, w, rss[t, w, "grpc"]
        if (t == "tls" && w >= 10000) printf " [aim < 80 MiB: %s]", verdict(rss[t, w, "grpc"] < 80)
        printf ", %d connection%s [aim 1: %s], etcd +%.1f MiB", cn[t, w, "grpc"], cn[t, w, "grpc"] == 1 ? "" : "s",
          verdict(cn[t, w, "grpc"] == 1), grow[t, w, "grpc"]
        if (ok[t, w, "node"]) printf " vs node etcd3 +%.1f MiB [aim <= node: %s]", grow[t, w, "node"],
          verdict(grow[t, w, "grpc"] <= grow[t, w, "node"])
        print ""
      }
    }' "$1"
}

# grpc_watch_path: how coord's grpc transport carries watches in this checkout (the watch row
# measures whichever it is).
grpc_watch_path() {
  if grep -rqs 'etcdserverpb.Watch/Watch' "$top/lua/coord/etcd/" "$top/lua/coord/etcd.lua"; then
    echo "the gRPC Watch stream"
  else
    echo "the JSON gateway (no gRPC Watch stream in this checkout)"
  fi
}
