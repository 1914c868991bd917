-- bench/cost.lua: deterministic per-call cost of the two get paths (issue 10, Performance):
-- machine instructions per call (callgrind, client process only) and Lua bytes allocated per
-- call (GC stopped), for coord.etcd get, coord.consul kv:get and bare coord.http.request, and
-- with --bare the C libcurl loop bench/bare.c under callgrind in the same run, for ratios.
--
--   lua5.4 bench/cost.lua [--n N] [--runs R] [--bare] [--no-callgrind] [--only NAME,...]
--
-- Starts its own etcd 3.4 and Consul 1.8 (spec/servers.lua) on free 127.0.0.1 ports and stops
-- them at the end. Each client runs in its own process, one request at a time (one coroutine;
-- bare with concurrency 1), twice under callgrind: with N and with 2N measured calls. The
-- difference of the two totals divided by N is the instructions per call, so start-up, the
-- warm-up and the connection set-up cancel out; with --runs R, the median of R such pairs.
-- Bytes per call come from the same child: after its measured calls it stops the GC and
-- counts collectgarbage("count") over 200 more calls.
--
-- Child mode (used by the driver): lua5.4 bench/cost.lua --child NAME TARGET N
local top = (debug.getinfo(1, "S").source:match("^@(.*)/bench/[^/]*$")) or "."
package.path = top .. "/lua/?.lua;" .. top .. "/lua/?/init.lua;" .. top .. "/spec/?.lua;" .. package.path
package.cpath = top .. "/?.so;" .. package.cpath
local coord = require "coord"

local WARMUP, BYTES_CALLS = 50, 200

-- the calls a child can make: name -> function(target) returning op() -> ok
local clients = {
  etcd = function(target)
    local etcd = require("coord.etcd").new { endpoints = { target } }
    return function()
      local kv = etcd:get("bench-key")
      return kv ~= nil and #kv.value == 100
    end
  end,
  consul = function(target)
    local consul = require("coord.consul").new { address = target }
    return function()
      local entry = consul.kv:get("bench-key")
      return entry ~= nil and #entry.value == 100
    end
  end,
  ["http-etcd"] = function(target)
    local request = coord.http.request
    local opts = { url = target .. "/v3/kv/range", method = "POST",
      body = ('{"key":"%s"}'):format(require("coord.core").b64encode("bench-key")),
      headers = { ["Content-Type"] = "application/json" } }
    return function()
      local res = request(opts)
      return res ~= nil and res.status == 200
    end
  end,
  ["http-consul"] = function(target)
    local request = coord.http.request
    local opts = { url = target .. "/v1/kv/bench-key" }
    return function()
      local res = request(opts)
      return res ~= nil and res.status == 200
    end
  end,
}

if arg[1] == "--child" then
  local name, target, n = arg[2], arg[3], assert(tonumber(arg[4]), "usage: cost.lua --child NAME TARGET N")
  local op = assert(clients[name], "unknown client " .. tostring(name))(target)
  local errors, bytes = 0, 0
  coord.run(function()
    for _ = 1, WARMUP + n do
      if not op() then errors = errors + 1 end
    end
    collectgarbage("collect")
    collectgarbage("stop")
    local before = collectgarbage("count")
    for _ = 1, BYTES_CALLS do
      if not op() then errors = errors + 1 end
    end
    bytes = (collectgarbage("count") - before) * 1024 / BYTES_CALLS
    collectgarbage("restart")
  end)
  print(("calls=%d errors=%d bytes_per_call=%.0f"):format(n, errors, bytes))
  os.exit(errors == 0 and 0 or 1)
end

local servers = require "servers"
local q = servers.sh_quote

local n, runs, with_bare, with_callgrind, only = 1000, 1, false, true, nil
do
  local i = 1
  while arg[i] do
    local a = arg[i]
    if a == "--n" then n = assert(tonumber(arg[i + 1]), "--n wants a number"); i = i + 1
    elseif a == "--runs" then runs = assert(math.tointeger(tonumber(arg[i + 1])), "--runs wants an integer"); i = i + 1
    elseif a == "--bare" then with_bare = true
    elseif a == "--no-callgrind" then with_callgrind = false
    elseif a == "--only" then
      only = {}
      for w in assert(arg[i + 1], "--only wants names"):gmatch("[^,]+") do only[w] = true end
      i = i + 1
    else error("usage: lua5.4 bench/cost.lua [--n N] [--runs R] [--bare] [--no-callgrind] [--only NAME,...]") end
    i = i + 1
  end
end

local bare
if with_bare then
  bare = os.tmpname()
  local ok, out = servers.sh(("gcc -O2 -Wall -Wextra -Werror %s -o %s -luv -lcurl"):format(q(top .. "/bench/bare.c"), q(bare)))
  assert(ok, out)
end

local etcd_server <close> = servers.etcd { version = "3.4" }
local consul_server <close> = servers.consul()
coord.run(function()
  assert(require("coord.etcd").new { endpoints = { etcd_server.endpoint } }:put("bench-key", ("v"):rep(100)))
  assert(require("coord.consul").new { address = consul_server.address }.kv:put("bench-key", ("v"):rep(100)))
end)

local lua_env = ("env LUA_PATH=%s LUA_CPATH=%s"):format(q(top .. "/lua/?.lua;" .. top .. "/lua/?/init.lua;;"),
  q(top .. "/?.so;;"))
local range_body = ('{"key":"%s"}'):format(require("coord.core").b64encode("bench-key"))
local rows = {
  { name = "etcd", target = etcd_server.endpoint, what = "coord.etcd get" },
  { name = "http-etcd", target = etcd_server.endpoint, what = "coord.http.request (etcd range)" },
  { name = "consul", target = consul_server.address, what = "coord.consul kv:get" },
  { name = "http-consul", target = consul_server.address, what = "coord.http.request (consul GET)" },
}
if bare then
  table.insert(rows, 3, { name = "bare-etcd", what = "bare C (etcd range)", bare = true,
    cmd = function(count) return ("%s %s %d 1 %s"):format(q(bare), q(etcd_server.endpoint .. "/v3/kv/range"), count, q(range_body)) end })
  rows[#rows + 1] = { name = "bare-consul", what = "bare C (consul GET)", bare = true,
    cmd = function(count) return ("%s %s %d 1"):format(q(bare), q(consul_server.address .. "/v1/kv/bench-key"), count) end }
end

local function command(row, count)
  if row.bare then return row.cmd(count) end
  return ("lua5.4 %s --child %s %s %d"):format(q(top .. "/bench/cost.lua"), row.name, q(row.target), count)
end

-- one child run, under callgrind unless asked not to: instructions (or nil), bytes per call (Lua rows)
local function run(row, count)
  local cmd, out_file = command(row, count), nil
  if with_callgrind then
    out_file = os.tmpname()
    cmd = ("valgrind --tool=callgrind --callgrind-out-file=%s %s"):format(q(out_file), cmd)
  end
  local ok, out = servers.sh(lua_env .. " timeout 600 " .. cmd)
  if os.getenv("COST_DEBUG") then io.stderr:write(out) end
  if out_file then os.remove(out_file) end
  assert(ok and (row.bare and out:match("errors=0") or out:match("calls=%d+ errors=0")), out)
  return tonumber(out:match("Collected : (%d+)")), tonumber(out:match("bytes_per_call=(%d+)"))
end

local results = {}
for _, row in ipairs(rows) do
  if not only or only[row.name] then
    local r = {}
    if with_callgrind then
      local list = {}
      for k = 1, runs do
        local i1, b = run(row, n)
        local i2 = run(row, 2 * n)
        list[k], r.bytes = (i2 - i1) / n, b
      end
      table.sort(list)
      r.instr = list[(runs + 1) // 2]
    else
      r.bytes = select(2, run(row, n))
    end
    results[row.name] = r
    io.stderr:write(("%-12s done\n"):format(row.name))
  end
end

print(("cost: %d calls per run, median of %d, one at a time, libcurl %s, load %s"):format(n, runs, coord.versions.libcurl,
  (io.open("/proc/loadavg"):read("l"):match("^(%S+ %S+ %S+)"))))
print(("%-34s %14s %12s %9s"):format("client", "instr/call", "bytes/call", "x bare"))
for _, row in ipairs(rows) do
  local r = results[row.name]
  if r then
    local base = results[row.name:match("consul") and "bare-consul" or "bare-etcd"]
    print(("%-34s %14s %12s %9s"):format(row.what, r.instr and ("%.0f"):format(r.instr) or "-",
      r.bytes and ("%.0f"):format(r.bytes) or "-",
      (r.instr and base and base.instr) and ("%.2f"):format(r.instr / base.instr) or "-"))
  end
end
if bare then os.remove(bare) end
