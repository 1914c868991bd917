-- spec/examples_spec.lua: every program in examples/ runs against real servers (started by
-- examples/with_servers.lua) and prints what the README says it does.

-- Under make asan the examples run without leak detection (ASan still checks every access):
-- LeakSanitizer's own thread tracer crashes with signal 11 ("LeakSanitizer has encountered a
-- fatal error") at the exit of service.lua. make valgrind checks the examples for leaks.
local servers = require "servers"

local no_leak_check = os.getenv("ASAN_OPTIONS") and "ASAN_OPTIONS=detect_leaks=0 " or ""

-- On a grpc run (spec/etcd_client.lua) the examples' own coord.etcd.new() gives grpc clients.
-- host.lua runs under the C host, which has no way in for that: it stays on json.
local lua = require("etcd_client").grpc() and "lua5.4 -e " .. servers.sh_quote('require("etcd_client").install()')
  or "lua5.4"

-- host runs under the C host (build/host, made by `make test`), the others under lua5.4
local function run(name)
  local program = name == "host" and "build/host" or lua
  local p = assert(io.popen(no_leak_check .. "lua5.4 examples/with_servers.lua " .. program .. " examples/" .. name .. ".lua 2>&1"))
  local out = p:read("a")
  local ok = p:close()
  return ok, out
end

local expectations = {
  demo = { "both mirrors hold a snapshot", "etcd     log_level    debug -> warn",
    "consul   log_level    debug -> warn", "consul   motd         deleted (was hello from coord)",
    "etcd    { log_level=warn, max_players=32 }", "consul  { log_level=warn, max_players=32 }" },
  plain = { 'etcd:   plain/greeting = "hello from etcd"', 'consul: plain/greeting = "hello from consul"',
    "etcd:   a missing key reads as\tnil", "a server that is not there:\tnil\tconnect" },
  game_loop = { "speed is now 1", "speed is now 4", "the mirror applied" },
  worker_pool = { "200 reads by 200 workers", "at most 8 in flight (limit 8)",
    "sum of the values: 2686700 (expected 2686700)" },
  service = { "registered demo-web-1", "health: 1 passing instance(s) of demo-web", "deregistered demo-web-1",
    "after exit: 0 instance(s) of demo-web registered" },
  leader = { "etcd: 3 leaders in turn", "consul: 3 leaders in turn" },
  luv = { "client: the server answers level = 1", "client: the server answers level = 3",
    "saw level 3 after", "the mirror applied 3 changes" },
  cqueues = { "operator: level = 3 written to etcd", "client: the server answers level = 1",
    "client: the server answers level = 3", "client saw 3 levels; the mirror applied 3 changes" },
  host = { "frame", "speed is now 1", "speed is now 3", "the mirror applied 3 changes", "coord steps" },
}

describe("examples", function()
  for _, name in ipairs { "demo", "plain", "game_loop", "worker_pool", "service", "leader", "luv", "cqueues", "host" } do
    it(name .. ".lua runs and shows what it is for", function()
      local ok, out = run(name)
      assert(ok, out)
      for _, want in ipairs(expectations[name]) do
        assert(out:find(want, 1, true), ("%q not in the output of %s.lua:\n%s"):format(want, name, out))
      end
      assert.is_nil(out:find("coord: error", 1, true), out)
    end)
  end

  it("leader.lua never has two leaders at once", function()
    local ok, out = run("leader")
    assert(ok, out)
    for backend in out:gmatch("(%a+): three candidates campaign") do
      local section = out:match(backend .. ": three candidates campaign\n(.-)\n" .. backend .. ": ")
      local leading = 0
      for verb in section:gmatch("%a+%s+(%a+)") do
        if verb == "leads" then leading = leading + 1 elseif verb == "stops" then leading = leading - 1 end
        assert.is_true(leading <= 1, section)
      end
    end
  end)
end)
