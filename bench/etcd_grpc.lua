-- bench/etcd_grpc.lua: client CPU per range on one local etcd 3.4 (plain HTTP), same run:
-- coord.etcd with transport = "grpc" (h2c), coord.etcd over the JSON gateway, and the bare C
-- libcurl JSON loop (bench/bare.c). All three on libcurl 8.14.1 (.deps/curl-8.14: h2c needs
-- libcurl 8), after `make build CURL=8`.
--
--   lua5.4 bench/etcd_grpc.lua [N [C [RUNS]]]     (default 20000 ranges, concurrency 50, 3 runs)
--
-- Each client is its own process; its CPU (user + system) is read from the waiting shell's
-- /proc/<pid>/stat (cutime + cstime) after it exits. Prints a table with the median of the runs
-- and each row's ratio to bare C and to coord json.
local top = (debug.getinfo(1, "S").source:match("^@(.*)/bench/[^/]*$")) or "."
package.path = top .. "/lua/?.lua;" .. top .. "/lua/?/init.lua;" .. top .. "/spec/?.lua;" .. package.path
package.cpath = top .. "/build/curl8/?.so;" .. package.cpath
local servers = require "servers"
local coord = require "coord"
local etcd_mod = require "coord.etcd"

local n, c, runs = tonumber(arg[1]) or 20000, tonumber(arg[2]) or 50, tonumber(arg[3]) or 3
local q = servers.sh_quote
local curl8 = top .. "/.deps/curl-8.14/usr"
local multiarch = "x86_64-linux-gnu"
local bare = os.tmpname()
local ok, out = servers.sh(("gcc -O2 -Wall -Wextra -Werror %s -o %s -I%s/include/%s -L%s/lib/%s -Wl,-rpath,%s/lib/%s -luv -lcurl")
  :format(q(top .. "/bench/bare.c"), q(bare), q(curl8), multiarch, q(curl8), multiarch, q(curl8), multiarch))
assert(ok, out)
assert(coord.versions.libcurl:match("^8"), "build coord against libcurl 8 first: make build CURL=8")

local server <close> = servers.etcd { version = "3.4" }
local url = server.endpoint
local value = ("v"):rep(100)
coord.run(function() assert(etcd_mod.new { endpoints = { url } }:put("bench-key", value)) end)

local lua_env = ("LUA_PATH=%s LUA_CPATH=%s"):format(q(top .. "/lua/?.lua;" .. top .. "/lua/?/init.lua;;"),
  q(top .. "/build/curl8/?.so;;"))
local body = ('{"key":"%s"}'):format(require("coord.core").b64encode("bench-key"))
local clients = {
  { "coord grpc", ("env %s BENCH_TRANSPORT=grpc lua5.4 %s get %s %d %d"):format(lua_env, q(top .. "/bench/etcd_coord.lua"), url, n, c) },
  { "coord json", ("env %s lua5.4 %s get %s %d %d"):format(lua_env, q(top .. "/bench/etcd_coord.lua"), url, n, c) },
  { "bare C json", ("%s %s %d %d %s"):format(q(bare), q(url .. "/v3/kv/range"), n, c, q(body)) },
}

local ticks = tonumber((select(2, servers.sh("getconf CLK_TCK")):match("%d+"))) or 100

-- CPU seconds of one client run, and its output line.
local function measure(cmd)
  local okr, o = servers.sh("sh -c " .. q(cmd .. " >/tmp/etcd_grpc_bench.$$ 2>&1; r=$?; cat /tmp/etcd_grpc_bench.$$; rm -f /tmp/etcd_grpc_bench.$$; echo; cat /proc/$$/stat; exit $r"))
  assert(okr, o)
  local line = o:match("requests=%d+ errors=%d+ [^\n]*")
  assert(line and line:match("errors=0"), o)
  local stat = o:match("\n(%d+ %b() .-)\n?$")
  local f = {}
  for x in stat:match("%b()%s+(.*)$"):gmatch("%S+") do f[#f + 1] = x end
  -- after the ")" field 3 is the first; cutime and cstime are fields 16 and 17
  return (tonumber(f[14]) + tonumber(f[15])) / ticks, line
end

local results = {}
for _, cl in ipairs(clients) do
  local list = {}
  for r = 1, runs do list[r] = measure(cl[2]) end
  table.sort(list)
  results[cl[1]] = list[(runs + 1) // 2] / n * 1e6
end
print(("etcd_grpc bench: %d ranges at concurrency %d, %d runs (median), %s, libcurl %s, load %s")
  :format(n, c, runs, select(2, servers.sh(q(servers.bin.etcd["3.4"]) .. " --version")):match("[^\n]+"),
    coord.versions.libcurl, (io.open("/proc/loadavg"):read("l"):match("^(%S+ %S+ %S+)"))))
print(("%-12s %16s %10s %12s"):format("client", "CPU us/range", "x bare C", "x coord json"))
for _, cl in ipairs(clients) do
  local v = results[cl[1]]
  print(("%-12s %16.1f %10.2f %12.2f"):format(cl[1], v, v / results["bare C json"], v / results["coord json"]))
end
os.remove(bare)
