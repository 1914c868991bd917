-- coord.etcd with transport = "grpc" behind `etcd grpc-proxy start` (the subcommand of the same
-- etcd binary, 3.4 and 3.5), which speaks gRPC only: the unary calls through it give what a
-- direct connection gives, errors included (the proxy loses their codes, coord.etcd.grpc_codes
-- restores them), and a proxy that goes away or restarts costs no more than its downtime.
-- Watches, locks and elections work through it, watches of child processes share upstream
-- watchers (read from etcd's /metrics), and a restart loses and repeats no event. gRPC
-- needs libcurl 8: on 7.88 the client refuses it (tested below), and `make test` runs this
-- file again on libcurl 8.14.1.
local coord = require "coord"
local servers = require "servers"
local etcd_mod = require "coord.etcd"
local via = require "coord.etcd.grpc"
local codes = require "coord.etcd.grpc_codes"

local function co(fn)
  return function() return coord.run(fn) end
end

-- Calls fn until it returns a value, bounded: after an outage the client's endpoint is in its
-- backoff for a moment, and nothing announces its end.
local function eventually(what, fn, limit)
  local v
  servers.until_true(what, function()
    v = fn()
    return v ~= nil
  end, limit or 15)
  return v
end

describe("coord.etcd.grpc_codes", function()
  it("gives etcd's code back to an etcd message that arrived as code 2, and leaves the rest", function()
    assert.equal(5, codes.code(2, "etcdserver: requested lease not found"))
    assert.equal(11, codes.code(2, "etcdserver: mvcc: required revision has been compacted"))
    assert.equal(14, codes.code(2, "etcdserver: no leader"))
    assert.equal(2, codes.code(2, "something else"))
    assert.equal(13, codes.code(13, "etcdserver: requested lease not found"))
  end)
end)

describe("etcd grpc-proxy and the JSON transport", function()
  local server, proxy
  setup(function()
    server = servers.etcd {}
    proxy = servers.grpc_proxy { etcd = server }
  end)
  teardown(function()
    if proxy then proxy:stop() end
    if server then server:stop() end
  end)

  it("has no JSON gateway: a json client gets HTTP 404 from it", co(function()
    local c = etcd_mod.new { endpoints = { proxy.endpoint }, timeout = 5 }
    local _, err = c:put("j/k", "v")
    assert.is_table(err)
    assert.equal(404, err.status, tostring(err))
  end))

  if not via.h2c then
    it("is refused to transport grpc on libcurl " .. coord.versions.libcurl
      .. " (make test runs this file again on 8.14.1)", function()
      local ok, err = pcall(etcd_mod.new, { endpoints = { proxy.endpoint }, transport = "grpc" })
      assert.is_false(ok)
      assert.matches("libcurl 8.0 or newer", err)
    end)
  end
end)

for _, version in ipairs(via.h2c and { "3.4", "3.5" } or {}) do
  describe("transport grpc behind etcd " .. version .. " grpc-proxy", function()
    local server, proxy, c, direct
    setup(function()
      server = servers.etcd { version = version }
      proxy = servers.grpc_proxy { etcd = server }
      c = etcd_mod.new { endpoints = { proxy.endpoint }, transport = "grpc", timeout = 10 }
      direct = etcd_mod.new { endpoints = { server.endpoint }, transport = "grpc", timeout = 10 }
    end)
    teardown(function()
      if proxy then proxy:stop() end
      if server then server:stop() end
    end)

    it("puts, gets, ranges, deletes and runs txns as a direct connection does", co(function()
      local ok, err, h = c:put("p/a", "one\0bin")
      assert.is_nil(err)
      assert.is_true(ok)
      assert.is_true(h.revision > 1)
      local _, _, _, prev = c:put("p/a", "two", { prev_kv = true })
      assert.equal("one\0bin", prev.value)
      assert(c:put("p/b", "b"))
      local kv, _, kh = c:get("p/a")
      assert.equal("two", kv.value)
      assert.same(assert(direct:get("p/a")), kv)
      assert.equal(select(3, direct:get("p/a")).cluster_id, kh.cluster_id)
      local list = assert(c:range("p/", { prefix = true, sort_order = "descend", sort_target = "key" }))
      assert.same(assert(direct:range("p/", { prefix = true, sort_order = "descend", sort_target = "key" })), list)
      assert.equal(2, list.count)
      assert.is_true((c:create("p/c", "v1")))
      local created, cerr, _, cur = c:create("p/c", "v2")
      assert.is_false(created)
      assert.is_nil(cerr)
      assert.equal("v1", cur.value)
      local r = assert(c:txn { compare = { { key = "p/c", target = "value", result = "==", value = "v1" } },
        success = { { put = "p/c", value = "v3" }, { get = "p/b" } } })
      assert.is_true(r.succeeded)
      assert.equal("v3", assert(direct:get("p/c")).value)
      local n, _, _, prevs = c:delete("p/", { prefix = true, prev_kv = true })
      assert.equal(3, n)
      assert.equal(3, #prevs)
      assert.is_nil((direct:get("p/a")))
    end))

    it("grants, reads and revokes leases", co(function()
      local lease = assert(c:grant(60))
      assert.equal(60, lease.ttl)
      assert(c:put("pl/k", "v", { lease = lease.id }))
      local info = assert(c:time_to_live(lease.id, { keys = true }))
      assert.equal(60, info.granted_ttl)
      assert.same({ "pl/k" }, info.keys)
      assert.equal(60, assert(direct:time_to_live(lease.id)).granted_ttl)
      assert.is_true((c:revoke(lease.id)))
      assert.is_nil((direct:get("pl/k")))
      assert.equal(-1, assert(c:time_to_live(lease.id)).ttl)
    end))

    it("classifies errors as a direct connection does", co(function()
      assert(direct:put("pe/k", "v"))
      local _, _, h = direct:get("pe/k")
      assert(direct:put("pe/k", "w"))
      assert(direct:compact(h.revision + 1))
      local cases = {
        { "unknown lease", function(x) return x:revoke(123456789) end, "not_found" },
        { "future revision", function(x) return x:get("pe/k", { revision = h.revision + 1000 }) end, "invalid" },
        { "compacted revision", function(x) return x:get("pe/k", { revision = h.revision }) end, "compacted" },
        { "duplicate key", function(x)
          return x:txn { success = { { put = "pe/d", value = "1" }, { put = "pe/d", value = "2" } } }
        end, "invalid" },
        { "unknown lease on put", function(x) return x:put("pe/l", "v", { lease = 987654321 }) end, "not_found" },
      }
      for _, case in ipairs(cases) do
        local name, fn, kind = case[1], case[2], case[3]
        local _, perr = fn(c)
        local _, derr = fn(direct)
        assert.is_table(perr, name)
        assert.equal(kind, derr.kind, name .. ": " .. tostring(derr))
        assert.equal(derr.kind, perr.kind, name .. ": " .. tostring(perr))
        assert.equal(derr.code, perr.code, name)
        assert.equal(derr.status, perr.status, name)
        assert.equal(derr.message, perr.message, name)
      end
    end))

    it("streams a snapshot through the proxy, which has no JSON gateway to send one", co(function()
      for i = 1, 20 do assert(direct:put(("ps/%02d"):format(i), ("s"):rep(2000))) end
      local path = server.dir .. "/through-proxy.db"
      local res, err, header = c:snapshot(path)
      assert.is_nil(err)
      assert.equal("etcd.header", getmetatable(header).__name)
      local data = assert(servers.read_file(path))
      assert.equal(#data, res.size)
      assert.is_true(res.size > 40000)
      assert.equal(proxy.endpoint, res.endpoint)
      local sum = require("coord.core").sha256():update(data:sub(1, -33)):digest()
      assert.equal(data:sub(-32), sum) -- (the file ends with the SHA-256 of what comes before)
      assert.equal(res.sha256, (sum:gsub(".", function(ch) return ("%02x"):format(ch:byte()) end)))
    end))

    it("lists the proxy itself as the cluster's member (its --advertise-client-url)", co(function()
      local members = assert(c:members())
      assert.equal(1, #members)
      assert.same({ proxy.endpoint }, members[1].client_urls)
      assert.equal(version, assert(c:status()).version:sub(1, 3))
    end))

    it("fails with a connection kind while the proxy is down and works again once it is back", co(function()
      assert(c:put("pd/k", "v1"))
      proxy:stop()
      local _, err = c:get("pd/k")
      assert.is_table(err)
      assert.is_true(err.kind == "connect" or err.kind == "unavailable", tostring(err))
      local _, perr = c:put("pd/k", "v2")
      assert.is_true(perr.kind == "connect" or perr.kind == "unavailable", tostring(perr))
      assert.is_not_true(perr.maybe_applied)
      proxy:start()
      local kv = eventually("a get through the restarted proxy", function() return (c:get("pd/k")) end)
      assert.equal("v1", kv.value)
    end))

    it("sends a read again when the proxy restarted under an idle connection; a write is not", co(function()
      assert(c:put("pr/k", "v1"))
      proxy:restart() -- the client's connection is dead now, and it does not know
      local kv, err = c:get("pr/k")
      assert.is_nil(err)
      assert.equal("v1", kv.value)
      proxy:restart()
      local ok, werr = c:put("pr/k", "v2")
      assert.is_nil(ok)
      assert.equal("unknown", werr.kind, tostring(werr))
      assert.is_true(werr.maybe_applied)
      assert.equal("v1", assert(direct:get("pr/k")).value) -- it was not sent again
      assert.equal("v1", eventually("a get after the write", function() return (c:get("pr/k")) end).value)
    end))

    -- the proxy's Go client answers "transport is closing" (14) while its connection dies;
    -- after that it retries a read until the call's deadline (sent as grpc-timeout)
    it("reports etcd down behind a live proxy as unavailable or timeout, and recovers", co(function()
      assert(c:put("pu/k", "v"))
      server:kill(1)
      local quick = etcd_mod.new { endpoints = { proxy.endpoint }, transport = "grpc", timeout = 2 }
      local t0 = coord.now()
      local _, err = quick:get("pu/k")
      assert.is_table(err)
      assert.is_true(err.kind == "unavailable" or err.kind == "timeout", tostring(err))
      assert.is_true(coord.now() - t0 < 5, "the call outlived its timeout")
      server:restart(1)
      servers.until_true("grpc-proxy healthy again", function() return proxy:healthy() end, 30)
      assert.equal("v", eventually("a get after etcd restarted", function() return (c:get("pu/k")) end, 30).value)
    end))
  end)

  describe("transport grpc behind etcd " .. version .. " grpc-proxy over TLS", function()
    local server, proxy, c
    setup(function()
      server = servers.etcd { version = version, tls = true }
      proxy = servers.grpc_proxy { etcd = server }
      c = etcd_mod.new { endpoints = { proxy.endpoint }, tls = server:client_tls(), transport = "grpc", timeout = 10 }
    end)
    teardown(function()
      if proxy then proxy:stop() end
      if server then server:stop() end
    end)

    it("puts, gets and grants beside an HTTP/1.1 request of the same process to the proxy", co(function()
      -- the health check leaves an idle HTTP/1.1 TLS connection to the proxy in libcurl's
      -- pool; a gRPC call must not be sent on it (the proxy would answer 404)
      assert.is_true(proxy:healthy())
      assert.is_true((c:put("pt/k", "v")))
      assert.is_true(proxy:healthy())
      assert.equal("v", assert(c:get("pt/k")).value)
      local lease = assert(c:grant(30))
      assert.is_true((c:revoke(lease.id)))
      local _, err = c:revoke(lease.id)
      assert.equal("not_found", err.kind, tostring(err))
    end))

    it("works across a proxy restart, writes included", co(function()
      assert(c:put("pt/r", "v1"))
      proxy:restart()
      assert.equal("v1", assert(c:get("pt/r")).value)
      proxy:restart()
      assert.is_true((c:put("pt/r", "v2"))) -- over TLS libcurl sees the old connection closed
      assert.equal("v2", assert(c:get("pt/r")).value)
    end))
  end)

  describe("transport grpc with auth behind etcd " .. version .. " grpc-proxy", function()
    local server, proxy
    setup(function()
      server = servers.etcd { version = version, auth = true }
      assert(server:ctl("user add alice --new-user-password=alicepw"))
      proxy = servers.grpc_proxy { etcd = server }
    end)
    teardown(function()
      if proxy then proxy:stop() end
      if server then server:stop() end
    end)

    it("authenticates through the proxy, whose calls carry the token, and maps refusals", co(function()
      local root = etcd_mod.new { endpoints = { proxy.endpoint }, transport = "grpc", user = "root", password = "rootpw" }
      assert.is_true((root:put("pa/k", "v")))
      assert.equal("v", assert(root:get("pa/k")).value)
      local alice = etcd_mod.new { endpoints = { proxy.endpoint }, transport = "grpc", user = "alice", password = "alicepw" }
      local _, err = alice:get("pa/k")
      assert.equal("permission", err.kind, tostring(err))
      local bad = etcd_mod.new { endpoints = { proxy.endpoint }, transport = "grpc", user = "alice", password = "wrong" }
      local _, aerr = bad:get("pa/k")
      assert.equal("auth", aerr.kind, tostring(aerr))
    end))
  end)

  describe("watches, locks and elections behind etcd " .. version .. " grpc-proxy", function()
    local server, proxy, c, direct
    local W = "etcd_debugging_mvcc_watcher_total"
    setup(function()
      server = servers.etcd { version = version }
      proxy = servers.grpc_proxy { etcd = server }
      c = etcd_mod.new { endpoints = { proxy.endpoint }, transport = "grpc", timeout = 10 }
      direct = etcd_mod.new { endpoints = { server.endpoint }, transport = "grpc", timeout = 10 }
    end)
    teardown(function()
      if proxy then proxy:stop() end
      if server then server:stop() end
    end)

    -- The next n put/delete events of w, bounded in time.
    local function take(w, n)
      local evs = {}
      while #evs < n do
        local ev, err = coord.timeout(20, w.next, w)
        assert(ev, "after " .. #evs .. " of " .. n .. " events: " .. tostring(err))
        if ev.type ~= "progress" then evs[#evs + 1] = ev end
      end
      return evs
    end

    local function put(key, value)
      local ok, err, h = direct:put(key, value)
      assert(ok, tostring(err))
      return h.revision
    end

    it("delivers a key's and a prefix's events", co(function()
      local w <close> = c:watch("pw/one")
      local wp <close> = c:watch("pw/", { prefix = true, prev_kv = true })
      assert(coord.timeout(10, w.ready, w))
      assert(coord.timeout(10, wp.ready, wp))
      local r1 = put("pw/one", "1")
      local r2 = put("pw/two", "2")
      local r3 = put("pw/one", "3")
      local evs = take(w, 2)
      assert.same({ r1, r3 }, { evs[1].kv.mod_revision, evs[2].kv.mod_revision })
      assert.equal("3", evs[2].kv.value)
      local pevs = take(wp, 3)
      assert.same({ r1, r2, r3 }, { pevs[1].kv.mod_revision, pevs[2].kv.mod_revision, pevs[3].kv.mod_revision })
      assert.equal("1", pevs[3].prev_kv.value)
    end))

    -- 10 child processes with nwatch watches each of prefix through the proxy. Returns etcd's
    -- watchers added once all are created, and again after the writes, which every watch
    -- must see once each, in order (the children check). The proxy joins a new watch to an
    -- upstream one that can serve it: at once while that one is being created, else when the
    -- new one's upstream watch gets its first reply, and then only if it has fewer than 5
    -- receivers (grpc-proxy's maxCoalesceReceivers).
    -- With noshare, each watch of a child has a server watch of its own (share = false);
    -- else a child's identical watches share one. The 3rd value: each child's count of
    -- server-side watches. settle: start the children one after another, each once the one
    -- before is ready, and wait (30 s at most) until etcd's watchers added are that many. Each
    -- later child then has an upstream watch of its own with one receiver until its first reply,
    -- when the proxy joins it to the first and cancels it (etcd counts it until that cancel
    -- arrives). Started all at once, several children can join one upstream watch still being
    -- created; once that one has 5 receivers it is never joined to another, and etcd keeps 2.
    local function fan(prefix, nwatch, writes, noshare, settle)
      local before = assert(server:metric(W))
      local procs, logs = {}, {}
      local cmd = "lua5.4 " .. servers.sh_quote(servers.top .. "/spec/etcd_proxy_child.lua") .. " "
        .. servers.sh_quote(proxy.endpoint) .. " " .. prefix .. " " .. nwatch .. (noshare and " noshare" or "")
      local function start(i)
        logs[i] = server.dir .. "/" .. prefix:gsub("%W", "") .. i .. ".log"
        procs[i] = servers.spawn(cmd, logs[i])
      end
      local function all(word, n)
        for i = 1, n or 10 do
          local out = servers.read_file(logs[i]) or ""
          if out:find("bad", 1, true) then error("child " .. i .. ": " .. out) end
          if not out:find(word, 1, true) then return false end
        end
        return true
      end
      if not settle then for i = 1, 10 do start(i) end end
      local ok, created, after = pcall(function()
        if settle then
          for i = 1, 10 do
            start(i)
            servers.until_true("child " .. i .. " ready", function() return all("ready", i) end, 60)
          end
        end
        servers.until_true(10 * nwatch .. " watches ready", function() return all("ready") end, 90)
        local created = assert(server:metric(W)) - before
        if settle and created ~= settle then
          local ok = pcall(servers.until_true, "etcd watchers settled", function()
            created = assert(server:metric(W)) - before
            return created == settle
          end, 30)
          if not ok then return created end -- the caller's assertion says how many
        end
        for i = 1, writes do put(prefix .. i, "v") end
        put(prefix .. "mark", "v")
        servers.until_true("every watch saw the writes", function() return all("marked") end, 60)
        local after = assert(server:metric(W)) - before
        put(prefix .. "end", "v")
        servers.until_true("every watch saw every event", function()
          return all("ok " .. nwatch * (writes + 2) .. "\n")
        end, 60)
        return created, after
      end)
      for _, p in ipairs(procs) do p:stop() end
      assert(ok, created)
      local own = {}
      for i = 1, 10 do own[i] = tonumber((servers.read_file(logs[i]) or ""):match("ready (%d+)")) end
      return created, after, own
    end

    it("costs etcd one watcher for 10 processes watching one prefix", co(function()
      local created, after = fan("one/", 1, 5, false, 1)
      assert.equal(1, created)
      assert.equal(1, after)
    end))

    it("shares upstream watchers among 10 processes with 100 unshared watches each on one prefix", co(function()
      local created, after = fan("fan/", 100, 5, true)
      -- after the writes every upstream watch but one has 5 receivers or more
      assert.is_true(after <= 1000 / 5 + 1, created .. " etcd watchers once created, " .. after .. " after the writes")
      assert.is_true(after >= 1)
    end))

    -- Issue 13: the identical watches of one client share one server watch, so the proxy
    -- sees one per process whatever the count of watches in it.
    it("costs etcd at most one watcher per process for 10 processes with 100 identical watches each", co(function()
      local created, after, own = fan("same/", 100, 5)
      for i = 1, 10 do assert.are.equal(1, own[i], "child " .. i .. "'s server watches") end
      print(("\n[etcd %s] 10 x 100 identical watches: %d etcd watchers once created, %d after the writes")
        :format(version, created, after))
      assert.is_true(created >= 1 and created <= 10, created .. " etcd watchers once created")
      assert.is_true(after >= 1 and after <= 10, after .. " etcd watchers after the writes")
    end))

    it("loses and repeats no event across a proxy restart", co(function()
      local w <close> = c:watch("pr/", { prefix = true })
      assert(coord.timeout(10, w.ready, w))
      local revs = {}
      for i = 1, 3 do revs[#revs + 1] = put("pr/" .. i, "a") end
      local got = {}
      for _, ev in ipairs(take(w, 3)) do got[#got + 1] = ev.kv.mod_revision end
      proxy:stop()
      for i = 1, 5 do revs[#revs + 1] = put("pr/" .. i, "b") end -- written while it is down
      proxy:start()
      for i = 1, 2 do revs[#revs + 1] = put("pr/x" .. i, "c") end
      for _, ev in ipairs(take(w, 7)) do got[#got + 1] = ev.kv.mod_revision end
      assert.same(revs, got)
      local extra = coord.timeout(1, w.next, w) -- nothing more: no event came twice
      assert.is_true(extra == nil or extra.type == "progress", "an event more than written")
    end))

    it("runs locks and elections", co(function()
      local a = etcd_mod.new { endpoints = { proxy.endpoint }, transport = "grpc", timeout = 10 }
      local l1 = assert(c:lock("plock", { ttl = 5 }))
      local none, err = a:lock("plock", { ttl = 5, timeout = 0.5 })
      assert.is_nil(none)
      assert.equal("timeout", err.kind)
      assert(c:unlock(l1))
      local l2 = assert(a:lock("plock", { ttl = 5, timeout = 10 }))
      assert(a:unlock(l2))
      local e = assert(c:campaign("pelect", "me", { ttl = 5, timeout = 10 }))
      assert.equal("me", assert(a:leader("pelect")).value)
      assert(c:resign(e))
      assert.is_nil((a:leader("pelect")))
    end))
  end)
end
