-- coord.etcd with transport = "grpc": the unary calls over etcd's native gRPC on HTTP/2 (h2c
-- and TLS, etcd 3.4 and 3.5), against the same servers and with the same results as the JSON
-- gateway. gRPC needs libcurl 8 (7.88 breaks reused h2c connections, and over TLS can report a
-- gRPC error status as a stream error): on 7.88 the client refuses it, and `make test` runs
-- this file again on libcurl 8.14.1.
local coord = require "coord"
local servers = require "servers"
local etcd_mod = require "coord.etcd"
local via = require "coord.etcd.grpc"
local grpc = require "coord.grpc"

local function co(fn)
  return function() return coord.run(fn) end
end

-- Established TCP connections to a local port (as etcd_cluster_spec counts them).
local function connections(port)
  local _, out = servers.sh("ss -Htn state established " .. servers.sh_quote("( dport = :" .. port .. " )"))
  local n = 0
  for _ in out:gmatch("[^\n]+") do n = n + 1 end
  return n
end

-- Bytes a server has received and not yet read on its client connections (it is stopped).
local function unread(port)
  local _, out = servers.sh("ss -Htn state established " .. servers.sh_quote("( sport = :" .. port .. " )"))
  local n = 0
  for line in out:gmatch("[^\n]+") do n = n + (tonumber(line:match("^%s*(%d+)")) or 0) end
  return n
end

describe("coord.grpc framing", function()
  it("frames and unframes one message, and refuses malformed frames", function()
    assert.equal("\0\0\0\0\3abc", grpc.frame("abc"))
    assert.equal("abc", grpc.unframe("\0\0\0\0\3abc"))
    assert.equal("", grpc.unframe("\0\0\0\0\0"))
    assert.is_nil(grpc.unframe("\0\0\0"))
    assert.is_nil(grpc.unframe("\0\0\0\0\4abc"))
    assert.is_nil(grpc.unframe("\0\0\0\0\2abc"))
    assert.is_nil(grpc.unframe("\1\0\0\0\3abc"))
    assert.equal("no leader: a b%", grpc._unescape("no leader%3A a%20b%"))
    assert.equal("1500m", grpc._timeout_header(1.5))
    assert.equal("1m", grpc._timeout_header(0))
  end)

  it("checks the transport option", function()
    assert.has_error(function() etcd_mod.new { transport = "rest" } end)
    assert.has_error(function() etcd_mod.new { transport = 2 } end)
    local ok, err = pcall(etcd_mod.new, { endpoints = { "https://127.0.0.1:2379/etcd" }, transport = "grpc" })
    assert.is_false(ok)
    assert.matches("fixed paths", err)
  end)
end)

if not via.h2c then
  describe("transport grpc on libcurl " .. coord.versions.libcurl, function()
    it("refuses every endpoint: gRPC needs libcurl 8 (make test runs this file again on 8.14.1)", function()
      for _, url in ipairs { "http://127.0.0.1:2379", "https://127.0.0.1:2379", "unix:///tmp/etcd.sock" } do
        local ok, err = pcall(etcd_mod.new, { endpoints = { url }, transport = "grpc" })
        assert.is_false(ok)
        assert.matches("libcurl 8.0 or newer", err)
      end
      assert.is_truthy(etcd_mod.new { endpoints = { "http://127.0.0.1:2379" }, transport = "json" })
    end)
  end)
end

local modes = { "h2c", "tls" }

for _, version in ipairs(via.h2c and { "3.4", "3.5" } or {}) do
  for _, mode in ipairs(modes) do
    describe("transport grpc, " .. mode .. ", etcd " .. version, function()
      local server, c, json
      setup(function()
        server = servers.etcd { version = version, tls = mode == "tls" }
        c = etcd_mod.new { endpoints = { server.endpoint }, tls = server:client_tls(), transport = "grpc" }
        json = etcd_mod.new { endpoints = { server.endpoint }, tls = server:client_tls() }
      end)
      teardown(function()
        if server then server:stop() end
      end)

      it("puts, gets, ranges and deletes as the JSON gateway does", co(function()
        local ok, err, h = c:put("g/a", "one\0bin")
        assert.is_nil(err)
        assert.is_true(ok)
        assert.equal("etcd.header", getmetatable(h).__name)
        assert.is_true(h.revision > 1)
        local ok2, _, _, prev = c:put("g/a", "two", { prev_kv = true })
        assert.is_true(ok2)
        assert.equal("one\0bin", prev.value)
        assert(c:put("g/b", "b"))
        local kv, _, h2 = c:get("g/a")
        local jkv, _, jh = json:get("g/a")
        assert.same(jkv, kv)
        assert.same(jh, h2)
        local list = assert(c:range("g/", { prefix = true, sort_order = "descend", sort_target = "key" }))
        assert.same(assert(json:range("g/", { prefix = true, sort_order = "descend", sort_target = "key" })), list)
        assert.equal("g/b", list[1].key)
        assert.equal(2, list.count)
        local absent, aerr, ah = c:get("g/none")
        assert.is_nil(absent)
        assert.is_nil(aerr)
        assert.is_true(ah.revision > 0)
        local n, _, _, prevs = c:delete("g/", { prefix = true, prev_kv = true })
        assert.equal(2, n)
        assert.equal(2, #prevs)
        assert.is_nil((json:get("g/a")))
      end))

      it("runs txns, guarded conveniences and compaction, with the JSON path's kinds", co(function()
        assert.is_true((c:create("t/k", "v1")))
        local ok, err, _, cur = c:create("t/k", "v2")
        assert.is_false(ok)
        assert.is_nil(err)
        assert.equal("v1", cur.value)
        assert.is_true((c:replace("t/k", "v1", "v3")))
        local r = assert(c:txn { compare = { { key = "t/k", target = "value", result = "==", value = "v3" } },
          success = { { get = "t/k" } } })
        assert.is_true(r.succeeded)
        local _, _, h = c:get("t/k")
        assert.is_true((c:compact(h.revision)))
        local none, cerr = c:get("t/k", { revision = 1 })
        assert.is_nil(none)
        assert.equal("compacted", cerr.kind)
        assert.equal(11, cerr.code)
        local _, ferr = c:get("t/k", { revision = h.revision + 1000 })
        assert.equal("invalid", ferr.kind)
        local _, jerr = json:get("t/k", { revision = h.revision + 1000 })
        assert.equal(jerr.kind, ferr.kind)
        assert.equal(jerr.status, ferr.status)
      end))

      it("grants, reads and revokes leases", co(function()
        local lease = assert(c:grant(60))
        assert.equal(60, lease.ttl)
        assert(c:put("l/k", "v", { lease = lease.id }))
        local info = assert(c:time_to_live(lease.id, { keys = true }))
        assert.equal(60, info.granted_ttl)
        assert.same({ "l/k" }, info.keys)
        local found = false
        for _, id in ipairs(assert(c:leases())) do found = found or id == lease.id end
        assert.is_true(found)
        assert.is_true((c:revoke(lease.id)))
        assert.is_nil((c:get("l/k")))
        local _, err = c:revoke(lease.id)
        assert.equal("not_found", err.kind)
        local members = assert(c:members())
        assert.equal(1, #members)
        assert.equal(version, assert(c:status()).version:sub(1, 3))
      end))

      it("gives a non-OK grpc-status as kind grpc with its code and decoded message", co(function()
        local reply, err = grpc.call({ url = server.endpoint, tls = server:client_tls() }, "/etcdserverpb.KV/Nope",
          "", { timeout = 5 })
        assert.is_nil(reply)
        assert.equal("grpc", err.kind, tostring(err))
        assert.equal(12, err.code)
        assert.matches("Nope", err.message)
        local ok, perr = grpc.call({ url = server.endpoint, tls = server:client_tls() }, "/etcdserverpb.KV/Range",
          "\255\255", { timeout = 5 })
        assert.is_nil(ok)
        assert.equal("grpc", perr.kind, tostring(perr))
        assert.equal(13, perr.code) -- the server could not parse the request
      end))

      it("multiplexes concurrent calls on one connection", co(function()
        local port = server.members[1].port
        assert(c:put("m/k", "v"))
        local before = connections(port)
        local fns = {}
        for i = 1, 20 do fns[i] = function() return assert(c:get("m/k")).value end end
        local res = { coord.gather(table.unpack(fns)) }
        for i = 1, 20 do assert.equal("v", res[i][1]) end
        assert.is_true(connections(port) - before <= 0, "a call opened a connection of its own")
      end))
    end)
  end

  describe("transport grpc with auth on etcd " .. version, function()
    local server, root
    local tls = false
    setup(function()
      server = servers.etcd { version = version, auth = true, tls = tls }
      assert(server:ctl("user add alice --new-user-password=alicepw"))
      root = etcd_mod.new { endpoints = { server.endpoint }, tls = server:client_tls(), transport = "grpc",
        user = "root", password = "rootpw" }
    end)
    teardown(function()
      if server then server:stop() end
    end)

    it("authenticates over gRPC and maps refusals to permission and auth", co(function()
      assert(root:put("a/k", "v"))
      assert.equal("v", assert(root:get("a/k")).value)
      local alice = etcd_mod.new { endpoints = { server.endpoint }, tls = server:client_tls(), transport = "grpc",
        user = "alice", password = "alicepw" }
      local _, err = alice:get("a/k")
      assert.equal("permission", err.kind)
      local bad = etcd_mod.new { endpoints = { server.endpoint }, tls = server:client_tls(), transport = "grpc",
        user = "alice", password = "wrong" }
      local _, aerr = bad:get("a/k")
      assert.equal("auth", aerr.kind)
    end))
  end)

  describe("transport grpc after a call timed out on etcd " .. version, function()
    local srv
    setup(function() srv = servers.etcd { version = version } end)
    teardown(function() if srv then srv:stop() end end)

    it("sends the next calls on a new connection, not after the one that never answered", co(function()
      local c = etcd_mod.new { endpoints = { srv.endpoint }, transport = "grpc", timeout = 3 }
      local proc = srv.members[1].proc
      -- stopped, etcd's kernel still accepts the client's first connections: the put's probe
      -- and then the put time out on them before any reply
      proc:pause()
      local ok, err = c:put("g/a", "1")
      proc:send("CONT")
      assert.is_nil(ok)
      assert.is_true(err.kind == "timeout" or err.cause == "timeout", tostring(err))
      -- etcd answers those connections now, and no one reads them: libcurl 8.14 made every
      -- later call wait for one of them to see a reply, with no timeout to end the wait.
      -- The endpoint backs off after its failure: "unavailable" until it is tried again.
      local ok2, err2
      servers.until_true("a put after the endpoint's backoff", function()
        ok2, err2 = coord.timeout(10, c.put, c, "g/b", "2")
        return ok2 or err2.kind ~= "unavailable"
      end, 20)
      assert.is_true(ok2, tostring(err2))
      local kv, gerr = coord.timeout(20, c.get, c, "g/b")
      assert.is_nil(gerr)
      assert.equal("2", kv.value)
    end))
  end)

  describe("transport grpc write safety on etcd " .. version, function()
    local victim, other
    local tls = false
    setup(function()
      victim = servers.etcd { version = version, tls = tls }
      other = servers.etcd { version = version, tls = tls }
    end)
    teardown(function()
      if victim then victim:stop() end
      if other then other:stop() end
    end)

    it("reports a put cut off with its connection as maybe applied and never sends it elsewhere", co(function()
      -- no probe before the put (coord.grpc sends one when the target has been quiet for
      -- grpc.idle): a probe would be the bytes that reach the stopped member, and the put
      -- would then rightly go to the other endpoint
      local grpc = require "coord.grpc"
      local idle = grpc.idle
      grpc.idle = 600
      finally(function() grpc.idle = idle end)
      local c = etcd_mod.new { endpoints = { victim.endpoint, other.endpoint }, tls = victim:client_tls(),
        transport = "grpc", timeout = 30 }
      assert.is_nil((c:get("w/none"))) -- the connection the put goes out on
      local port = victim.members[1].port
      local proc = victim.members[1].proc
      proc:pause()
      local res
      local call, log = grpc.call, {} -- each attempt, for the failure message
      grpc.call = function(t, method, msg, o)
        local reply, err = call(t, method, msg, o)
        log[#log + 1] = t.url .. method .. ": " .. (reply and "reply" or tostring(err))
        return reply, err
      end
      finally(function() grpc.call = call end)
      -- a value of 4 KiB, so that the bytes counted are the put's and not a control frame of
      -- the connection sent late (had the kill come before the put was written, libcurl would
      -- find the connection dead, fail to connect again, and rightly send it elsewhere)
      local value = ("once"):rep(1024)
      coord.spawn(function() res = { c:put("w/k", value) } end)
      servers.until_true("the put reached the stopped member", function() return unread(port) >= #value end, 20)
      proc:kill()
      servers.until_true("the put failed", function() return res ~= nil end, 20)
      assert.is_nil(res[1], "the attempts: " .. table.concat(log, "; "))
      assert.equal("unknown", res[2].kind, tostring(res[2]))
      assert.is_true(res[2].maybe_applied)
      local json = etcd_mod.new { endpoints = { other.endpoint }, tls = other:client_tls() }
      local kv, err = json:get("w/k")
      assert.is_nil(err)
      assert.is_nil(kv)
    end))
  end)
end
