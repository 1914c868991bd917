-- spec/etcd_discovery_spec.lua: DNS SRV lookups on the loop (coord.dns, c-ares in the C core)
-- and coord.etcd.new{discovery_srv = domain}, against dnsmasq on loopback and real etcds.

local coord = require "coord"
local core = require "coord.core"
local dns = require "coord.dns"
local servers = require "servers"
local helpers = require "helpers"
local etcd_mod = require "etcd_client" -- coord.etcd with the run's transport

local function co(fn)
  return function() return coord.run(fn) end
end

-- Descriptors open in this process.
-- The UDP sockets this process holds (the resolver's are the only ones coord opens): the
-- socket inodes of its descriptors that /proc/net/udp{,6} lists. Other descriptors (an idle
-- HTTP connection closed meanwhile) do not count.
local function open_fds()
  local p = assert(io.popen("ls -l /proc/$PPID/fd 2>/dev/null")) -- $PPID: this process, the shell's parent
  local mine = {}
  for line in p:lines() do
    local inode = line:match("socket:%[(%d+)%]")
    if inode then mine[inode] = true end
  end
  p:close()
  local n = 0
  for _, file in ipairs { "/proc/net/udp", "/proc/net/udp6" } do
    local f = io.open(file)
    if f then
      for line in f:lines() do
        local inode = line:match("^%s*%d+:%s+%S+%s+%S+%s+%S+%s+%S+%s+%S+%s+%S+%s+%S+%s+%S+%s+(%d+)")
        if inode and mine[inode] then n = n + 1 end
      end
      f:close()
    end
  end
  return n
end

describe("coord.dns and etcd discovery", function()
  local etcd, tls_etcd, dead, ns, stalled

  setup(function()
    etcd = servers.etcd { version = "3.5" }
    tls_etcd = servers.etcd { version = "3.4", tls = true }
    dead = servers.free_port() -- nothing listens here
    local port, tport = etcd.members[1].port, tls_etcd.members[1].port
    ns = servers.dnsmasq {
      "_etcd-client._tcp.example.test,127.0.0.1," .. port,
      "_etcd-client._tcp.prio.test,127.0.0.1," .. dead .. ",20,10",
      "_etcd-client._tcp.prio.test,127.0.0.1," .. port .. ",10,10",
      "_etcd-client-ssl._tcp.both.test,127.0.0.1," .. dead .. ",10,10",
      "_etcd-client._tcp.both.test,127.0.0.1," .. port .. ",10,10",
      "_etcd-client-ssl._tcp.tls.test,localhost," .. tport,
      "_etcd-client-gw._tcp.named.test,127.0.0.1," .. port,
    }
    -- a DNS server that never answers: dnsmasq stopped, its socket bound and unread
    stalled = servers.dnsmasq {}
    stalled.proc:pause()
  end)

  teardown(function()
    if stalled then stalled.stop() end
    if ns then ns.stop() end
    if etcd then etcd:stop() end
    if tls_etcd then tls_etcd:stop() end
  end)

  describe("dns.srv", function()
    it("returns the records of a name", co(function()
      local list, err = dns.srv("_etcd-client._tcp.prio.test", { dns_server = ns.server })
      assert.is_nil(err)
      assert.are.equal(2, #list)
      table.sort(list, function(a, b) return a.priority < b.priority end)
      assert.are.same({ target = "127.0.0.1", port = etcd.members[1].port, priority = 10, weight = 10 }, list[1])
      assert.are.same({ target = "127.0.0.1", port = dead, priority = 20, weight = 10 }, list[2])
    end))

    it("fails with kind resolve and the name on NXDOMAIN", co(function()
      local list, err = dns.srv("_etcd-client._tcp.missing.test", { dns_server = ns.server })
      assert.is_nil(list)
      assert.are.equal("resolve", err.kind)
      assert.are.equal("_etcd-client._tcp.missing.test", err.name)
      assert.truthy(tostring(err):find("NXDOMAIN", 1, true))
    end))

    it("times out within its bound on a server that never answers", co(function()
      local t0 = coord.now()
      local list, err = dns.srv("_etcd-client._tcp.example.test", { dns_server = stalled.server, timeout = 0.5 })
      local took = coord.now() - t0
      assert.is_nil(list)
      assert.are.equal("timeout", err.kind)
      assert.is_true(took >= 0.45, "gave up after " .. took .. " s")
      assert.is_true(took < 5, "took " .. took .. " s")
      assert.are.equal(0, core.inflight())
    end))

    it("raises on bad arguments and options", function()
      assert.has_error(function() dns.srv(1) end, "bad argument #1 to 'srv' (string expected, got integer)")
      assert.has_error(function() dns.srv("x.test", 1) end, "bad argument #2 to 'srv' (table or nil expected, got integer)")
      assert.has_error(function() dns.srv("x.test", { timeout = "1" }) end, "bad option 'timeout' to 'srv' (number expected, got string)")
      assert.has_error(function() dns.srv("x.test", { timeout = 0 }) end,
        "bad option 'timeout' to 'srv' (seconds above 0, at most 3600, expected)")
      for _, bad in ipairs { "not a server", "127.0.0.1:", "127.0.0.1:53,", "::1" } do
        assert.has_error(function() dns.srv("x.test", { dns_server = bad }) end,
          ("bad option 'dns_server' to 'srv' (\"host:port\" expected, IPv6 as \"[addr]:port\", several separated by commas; got %q)"):format(bad))
      end
      -- what the check lets through, c-ares takes
      local list = coord.run(dns.srv, "_probe._tcp.probe.test", { dns_server = "127.0.0.1:1," .. ns.server })
      assert.are.equal(1, list and #list)
      assert.are.equal(0, core.inflight())
    end)

    it("a lookup canceled mid-flight releases its resolver and socket", co(function()
      local before = open_fds()
      local task = coord.spawn(function()
        return dns.srv("_etcd-client._tcp.example.test", { dns_server = stalled.server, timeout = 60 })
      end)
      servers.until_true("lookup in flight", function() return core.inflight() == 1 end, 10)
      assert.are.equal(before + 1, open_fds()) -- the resolver's UDP socket
      task:cancel()
      local _, err = task:join()
      assert.are.equal("canceled", err.kind)
      servers.until_true("lookup released", function() return core.inflight() == 0 end, 10)
      assert.are.equal(before, open_fds())
      -- and a timeout around it cancels it the same way
      local list, terr = coord.timeout(0.2, dns.srv, "_etcd-client._tcp.example.test",
        { dns_server = stalled.server, timeout = 60 })
      assert.is_nil(list)
      assert.are.equal("timeout", terr.kind)
      servers.until_true("lookup released", function() return core.inflight() == 0 end, 10)
      assert.are.equal(before, open_fds())
    end))

    it("lua_close with lookups in flight or canceled is clean", function()
      local code = ([[
        local coord = require "coord"
        local dns = require "coord.dns"
        local core = require "coord.core"
        local o = { dns_server = %q, timeout = 60 }
        for i = 1, 3 do coord.spawn(dns.srv, "_etcd-client._tcp.example.test", o) end
        local t = coord.spawn(dns.srv, "_etcd-client._tcp.example.test", o)
        for _ = 1, 20 do if core.inflight() == 4 then break end coord.step(0.05) end
        assert(core.inflight() == 4, "lookups not in flight")
        t:cancel() -- queued for the next poll, which never comes
        os.exit(0, true)
      ]]):format(stalled.server)
      local ok, status, out = helpers.run_lua(code)
      assert.is_true(ok, "exit " .. tostring(status) .. ": " .. out)
      assert.are.equal("", out)
    end)
  end)

  describe("coord.etcd.new{discovery_srv}", function()
    it("finds etcd through SRV and reads and writes", co(function()
      local c = etcd_mod.new { discovery_srv = "example.test", dns_server = ns.server }
      assert.are.equal(0, #c.endpoints) -- new() does not resolve
      assert(c:put("disc/k", "v1"))
      local kv = c:get("disc/k") -- (checks the value only: the result shape is issue 10's)
      assert.are.equal("v1", kv and kv.value)
      assert.are.same({ "http://127.0.0.1:" .. etcd.members[1].port }, c:sync())
    end))

    it("orders by priority (lowest first) and moves on from a dead one", co(function()
      local c = etcd_mod.new { discovery_srv = "prio.test", dns_server = ns.server }
      assert(c:put("disc/p", "v"))
      assert.are.equal("http://127.0.0.1:" .. etcd.members[1].port, c.endpoints[1].url)
      assert.are.equal("http://127.0.0.1:" .. dead, c.endpoints[2].url)
    end))

    it("uses both record sets, https first, and fails over from one to the other", co(function()
      local c = etcd_mod.new { discovery_srv = "both.test", dns_server = ns.server }
      assert(c:put("disc/b", "v")) -- the https endpoint refuses the connection: never sent
      assert.are.equal("https://127.0.0.1:" .. dead, c.endpoints[1].url)
      assert.are.equal("http://127.0.0.1:" .. etcd.members[1].port, c.endpoints[2].url)
      assert.are.equal("v", (c:get("disc/b")).value)
    end))

    it("speaks https to the _etcd-client-ssl records", co(function()
      local c = etcd_mod.new { discovery_srv = "tls.test", dns_server = ns.server, tls = tls_etcd:client_tls() }
      assert(c:put("disc/t", "tls"))
      assert.are.equal("https://localhost:" .. tls_etcd.members[1].port, c.endpoints[1].url)
      assert.are.equal("tls", (c:get("disc/t")).value)
    end))

    it("looks up _etcd-client-NAME with discovery_srv_name", co(function()
      local c = etcd_mod.new { discovery_srv = "named.test", discovery_srv_name = "gw", dns_server = ns.server }
      assert(c:put("disc/n", "v"))
    end))

    it("resolves once for concurrent first calls", co(function()
      local c = etcd_mod.new { discovery_srv = "example.test", dns_server = ns.server }
      local r = { coord.gather(function() return c:get("disc/k") end, function() return c:get("disc/k") end,
        function() return c:put("disc/k", "v2") end) }
      for i = 1, 3 do assert.truthy(r[i][1]) end
      assert.are.equal(1, c.discovery.gen)
    end))

    it("fails with kind resolve and the domain when neither name exists", co(function()
      local c = etcd_mod.new { discovery_srv = "missing.test", dns_server = ns.server }
      local kv, err = c:get("k")
      assert.is_nil(kv)
      assert.are.equal("resolve", err.kind)
      assert.are.equal("missing.test", err.name)
      assert.are.same({ "_etcd-client-ssl._tcp.missing.test", "_etcd-client._tcp.missing.test" }, err.names)
      local ok, perr = c:put("k", "v")
      assert.is_nil(ok)
      assert.are.equal("resolve", perr.kind)
    end))

    it("fails with kind timeout when the DNS server does not answer", co(function()
      local c = etcd_mod.new { discovery_srv = "example.test", dns_server = stalled.server, timeout = 0.5 }
      local t0 = coord.now()
      local kv, err = c:get("k")
      assert.is_nil(kv)
      assert.are.equal("timeout", err.kind)
      assert.are.equal("example.test", err.name)
      assert.is_true(coord.now() - t0 < 5)
    end))

    it("looks the records up again once every endpoint is failing", co(function()
      local moving = servers.dnsmasq { "_etcd-client._tcp.moving.test,127.0.0.1," .. dead }
      local c = etcd_mod.new { discovery_srv = "moving.test", dns_server = moving.server }
      local _, err = c:get("k")
      assert.are.equal("connect", err.kind)
      moving.proc:stop()
      local port = moving.port
      moving = servers.dnsmasq({ "_etcd-client._tcp.moving.test,127.0.0.1," .. etcd.members[1].port }, { port = port })
      servers.until_true("discovery moved", function() return (c:get("disc/k")) ~= nil end, 20)
      assert.are.equal("http://127.0.0.1:" .. etcd.members[1].port, c.endpoints[1].url)
      -- looked up again at least once (more when a lookup came while the new server was
      -- still starting)
      assert.is_true(c.discovery.gen >= 2, "gen " .. c.discovery.gen)
      moving.stop()
    end))

    it("looks the records up again every auto_sync seconds", co(function()
      local c = etcd_mod.new { discovery_srv = "example.test", dns_server = ns.server, auto_sync = 0.3 }
      assert(c:put("disc/a", "v"))
      assert.are.equal(1, c.discovery.gen)
      servers.until_true("looked up again", function()
        assert(c:get("disc/a"))
        return c.discovery.gen > 1
      end, 10)
      assert.are.equal("http://127.0.0.1:" .. etcd.members[1].port, c.seeds[1].url)
    end))

    it("raises on bad options", function()
      assert.has_error(function() etcd_mod.new { discovery_srv = 1 } end,
        "bad option 'discovery_srv' to 'new' (a domain name expected)")
      assert.has_error(function() etcd_mod.new { discovery_srv = "a.test", endpoints = { "http://x:1" } } end,
        "bad option 'endpoints' to 'new' (discovery_srv finds the endpoints: give one or the other)")
      assert.has_error(function() etcd_mod.new { discovery_srv = "a.test", dns_server = 5 } end,
        "bad option 'dns_server' to 'new' (\"host:port\" expected, IPv6 as \"[addr]:port\", several separated by commas; got number)")
    end)
  end)
end)
