-- coord.etcd with transport = "grpc": etcd's bidirectional gRPC streams (Watch/Watch and
-- Lease/LeaseKeepAlive) against real etcd 3.4 and 3.5, over h2c and TLS, with nothing left on
-- the JSON gateway: watches, keepalives, locks and elections, many watches beside many calls
-- on one HTTP/2 connection, a server restart. gRPC needs libcurl 8: on 7.88 this file checks
-- that the client refuses it, and `make test` runs it again on libcurl 8.14.1.
local coord = require "coord"
local core = require "coord.core"
local servers = require "servers"
local sup = require "etcd_watch_support"
local etcd_mod = require "coord.etcd"
local via = require "coord.etcd.grpc"
local grpc = require "coord.grpc"
local schema = require "coord.etcd.pb_schema"
local stats = require("coord.etcd.watch").stats

-- Runs fn, then lets what it left (closing streams, cancels) finish: bounded, so a request
-- left in flight fails the test instead of hanging the run.
local function run(fn)
  coord.run(fn)
  local deadline = core.now() + 30
  while coord.step(0.5) do
    assert(core.now() < deadline, "work left in flight 30 s after the test: " .. tostring(core.inflight()) .. " requests")
  end
end

local function ready(w)
  local rev, err = coord.timeout(10, w.ready, w)
  assert(rev, tostring(err))
  return rev
end

local function values(evs)
  local out = {}
  for i, ev in ipairs(evs) do out[i] = ev.type .. " " .. ev.kv.key .. "=" .. ev.kv.value end
  return out
end

-- The next n events of w (bounded in time).
local function take(w, n)
  local evs = {}
  while #evs < n do
    local ev, err = coord.timeout(10, w.next, w)
    assert(ev, "after " .. #evs .. " of " .. n .. " events: " .. tostring(err))
    if ev.type ~= "progress" then evs[#evs + 1] = ev end
  end
  return evs
end

-- Writes through the JSON gateway of srv (another path than the one under test), with a
-- client of its own: its calls ask for HTTP/1.1, so libcurl never multiplexes them onto the
-- gRPC client's h2c connection (which etcd's gRPC server would refuse).
local writers = setmetatable({}, { __mode = "k" })
local function writer(srv)
  writers[srv] = writers[srv] or sup.client(srv)
  return writers[srv]
end
local function put(srv, key, value)
  local ok, err, h = writer(srv):put(key, value)
  assert(ok, tostring(err))
  return h.revision
end
local function delete(srv, key)
  local n, err, h = writer(srv):delete(key)
  assert(n, tostring(err))
  return h.revision
end

-- A gRPC stream over a scripted HTTP stream: reads hand out the given chunks, then the end.
local function scripted(chunks, trailers)
  local st = grpc.open({ url = "http://127.0.0.1:1" }, "/test.S/M")
  st.s:close()
  local i = 0
  st.s = {
    response = function() return 200 end,
    read = function()
      i = i + 1
      return chunks[i]
    end,
    trailers = function() return trailers end,
    close = function() end,
  }
  return st
end

describe("coord.grpc streams", function()
  it("parse frames split across reads and several in one read", function()
    local f1, f2, f3 = grpc.frame("first"), grpc.frame(""), grpc.frame(("x"):rep(70000))
    local all = f1 .. f2 .. f3
    local st = scripted({ all:sub(1, 3), all:sub(4, 12), all:sub(13, 40000), all:sub(40001) },
      "content-type: application/grpc\r\ngrpc-status: 0\r\n")
    assert.are.equal("first", st:recv())
    assert.are.equal("", st:recv())
    assert.are.equal(("x"):rep(70000), st:recv())
    local m, err = st:recv()
    assert.is_nil(m)
    assert.is_nil(err)
  end)

  it("report bad framing as 'protocol' and a status as 'grpc'", function()
    local m, err = scripted({ "\1\0\0\0\1a" }, "grpc-status: 0\r\n"):recv()
    assert.is_nil(m)
    assert.are.equal("protocol", err.kind)
    m, err = scripted({ grpc.frame("abc"):sub(1, 6) }, "grpc-status: 0\r\n"):recv()
    assert.is_nil(m)
    assert.are.equal("protocol", err.kind)
    assert.matches("inside a frame", err.message)
    m, err = scripted({}, "content-type: application/grpc\r\n"):recv()
    assert.are.equal("protocol", err.kind)
    local st = scripted({ grpc.frame("ok") }, "grpc-status: 14\r\ngrpc-message: no%20leader\r\n")
    assert.are.equal("ok", st:recv())
    m, err = st:recv()
    assert.is_nil(m)
    assert.are.equal("grpc", err.kind)
    assert.are.equal(14, err.code)
    assert.are.equal("no leader", err.grpc_message)
    -- the failure stays
    assert.are.equal(err, select(2, st:recv()))
  end)
end)

if not via.h2c then
  describe("gRPC streams on libcurl " .. coord.versions.libcurl, function()
    it("are refused with the transport: gRPC needs libcurl 8 (make test runs this file again on 8.14.1)", function()
      local ok, err = pcall(etcd_mod.new, { endpoints = { "http://127.0.0.1:2379" }, transport = "grpc" })
      assert.is_false(ok)
      assert.matches("libcurl 8.0 or newer", err)
    end)
  end)
end

for _, version in ipairs(via.h2c and { "3.4", "3.5" } or {}) do
  for _, mode in ipairs { "h2c", "tls" } do
    describe("gRPC streams, " .. mode .. ", etcd " .. version, function()
      local srv
      local function client(opts)
        local o = { transport = "grpc" }
        for k, v in pairs(opts or {}) do o[k] = v end
        return sup.client(srv, o)
      end
      setup(function()
        srv = servers.etcd { version = version, tls = mode == "tls",
          args = "--experimental-watch-progress-notify-interval=300ms" }
      end)
      teardown(function() if srv then srv:stop() end end)

      it("carries a raw Watch stream: frames out, frames in, a clean end", function()
        run(function()
          local t = { url = srv.endpoint, tls = srv:client_tls() }
          local s <close> = grpc.open(t, "/etcdserverpb.Watch/Watch", { metadata = { hasleader = "true" } })
          local req = core.pb_encode(schema.types.WatchRequest,
            { create_request = { key = "raw", watch_id = 7 } })
          assert.is_true(s:send(req))
          local msg = assert(coord.timeout(10, s.recv, s))
          local r = assert(core.pb_decode(schema.types.WatchResponse, msg))
          assert.is_true(r.created)
          assert.are.equal(7, r.watch_id)
          -- two events in one write may arrive in one read: both are parsed
          put(srv, "raw", "1")
          put(srv, "raw", "2")
          local got = {}
          while #got < 2 do
            r = assert(core.pb_decode(schema.types.WatchResponse, assert(coord.timeout(10, s.recv, s))))
            for _, e in ipairs(r.events or {}) do got[#got + 1] = e.kv.value end
          end
          assert.are.same({ "1", "2" }, got)
          s:close()
          local m, err = s:recv()
          assert.is_nil(m)
          assert.are.equal("canceled", err.kind)
          -- LeaseKeepAlive ends its side (grpc-status 0 in the trailers) once ours has ended
          -- (Watch never does: etcd's clients cancel it)
          local k <close> = grpc.open(t, "/etcdserverpb.Lease/LeaseKeepAlive")
          assert.is_true(k:send(core.pb_encode(schema.types.LeaseKeepAliveRequest, { ID = 12345 })))
          r = assert(core.pb_decode(schema.types.LeaseKeepAliveResponse, assert(coord.timeout(10, k.recv, k))))
          assert.are.equal(12345, r.ID)
          assert.is_nil(r.TTL) -- 0: no such lease
          k:close_send()
          m, err = coord.timeout(10, k.recv, k)
          assert.is_nil(m)
          assert.is_nil(err)
          assert.is_nil(k:recv())
        end)
      end)

      it("reports a gRPC status from the trailers as a 'grpc' error", function()
        run(function()
          local t = { url = srv.endpoint, tls = srv:client_tls() }
          local s <close> = grpc.open(t, "/etcdserverpb.Nope/Nope")
          s:close_send()
          local m, err = coord.timeout(10, s.recv, s)
          assert.is_nil(m)
          assert.are.equal("grpc", err.kind)
          assert.are.equal(12, err.code) -- unimplemented
        end)
      end)

      it("watches a key, a prefix, from a start revision; cancels on close", function()
        run(function()
          local c = client()
          local w <close> = c:watch("one")
          local wp <close> = c:watch("pre/", { prefix = true, prev_kv = true })
          ready(w); ready(wp)
          local r1 = put(srv, "one", "v1")
          put(srv, "pre/a", "x")
          put(srv, "pre/a", "y")
          put(srv, "pr", "no")
          delete(srv, "one")
          local evs = take(w, 2)
          assert.are.same({ "put one=v1", "delete one=" }, values(evs))
          assert.are.equal(r1, evs[1].kv.mod_revision)
          assert.are.equal("integer", math.type(evs[1].kv.mod_revision))
          evs = take(wp, 2)
          assert.are.same({ "put pre/a=x", "put pre/a=y" }, values(evs))
          assert.are.equal("x", evs[2].prev_kv.value)
          local h <close> = c:watch("one", { start_revision = r1 })
          assert.are.same({ "put one=v1", "delete one=" }, values(take(h, 2)))
          -- filters ride on the enum mapping
          local np <close> = c:watch("one", { start_revision = r1, no_put = true })
          assert.are.same({ "delete one=" }, values(take(np, 1)))
          w:close()
          local st = stats(c)
          assert.are.equal(3, st.watches)
          assert.are.equal(1, st.streams)
        end)
      end)

      it("reassembles fragmented revisions larger than the server's message limit", function()
        run(function()
          local c = client()
          local big = ("x"):rep(100 * 1024)
          -- one revision of 1.4 MB; with prev_kv its event batch is twice that
          local ops = {}
          for i = 1, 14 do ops[i] = { put = ("frag/%02d"):format(i), value = big .. i } end
          local _, err, h1 = writer(srv):txn { success = ops }
          assert(h1, tostring(err))
          for i = 1, 14 do ops[i].value = big .. "b" .. i end
          local _, err2, h2 = writer(srv):txn { success = ops }
          assert(h2, tostring(err2))
          local w <close> = c:watch("frag/", { prefix = true, prev_kv = true, start_revision = h1.revision })
          local evs = take(w, 28)
          for i = 1, 28 do
            local n = (i - 1) % 14 + 1
            assert.are.equal(("frag/%02d"):format(n), evs[i].kv.key)
            assert.are.equal(i <= 14 and h1.revision or h2.revision, evs[i].kv.mod_revision)
            assert.are.equal(i <= 14 and big .. n or big .. "b" .. n, evs[i].kv.value)
            if i > 14 then assert.are.equal(big .. n, evs[i].prev_kv.value) end
          end
          assert.is_true(stats(c).fragments > 0, "no fragmented result was seen")
        end)
      end)

      it("reports a compacted start revision as 'compacted'", function()
        run(function()
          local c = client()
          local r = put(srv, "cmp", "1")
          put(srv, "cmp", "2")
          local last = put(srv, "cmp", "3")
          assert(c:compact(last))
          local w <close> = c:watch("cmp", { start_revision = r })
          local ev, err = coord.timeout(10, w.next, w)
          assert.is_nil(ev)
          assert.are.equal("compacted", err.kind)
          assert.are.equal(last, err.compact_revision)
        end)
      end)

      it("delivers progress notifications", function()
        run(function()
          local c = client()
          local w <close> = c:watch("quiet", { progress_notify = true })
          ready(w)
          local r = put(srv, "elsewhere", "x")
          local ev
          for _ = 1, 20 do
            ev = assert(coord.timeout(5, w.next, w))
            assert.are.equal("progress", ev.type)
            if ev.revision >= r then break end
          end
          assert.are.equal(r, ev.revision)
        end)
      end)

      it("keeps a lease alive past its TTL, and reports its loss when revoked", function()
        run(function()
          local c = client()
          local l = assert(c:grant(2))
          assert.is_true(assert(c:keepalive_once(l.id)) >= 1)
          local lost
          local k <close> = c:keepalive(l.id, { ttl = 2, on_lost = function(err) lost = err end })
          assert(c:put("leased", "v", { lease = l.id }))
          -- outlive the TTL twice over, checking the key is still there each half second
          local t0 = coord.now()
          while coord.now() - t0 < 4.5 do
            coord.sleep(0.5)
            local kv = assert(c:get("leased"))
            assert.are.equal("v", kv.value)
          end
          local info = assert(c:time_to_live(l.id))
          assert.is_true(info.ttl > 0)
          assert(c:revoke(l.id))
          local ok, err = coord.timeout(10, k.wait, k)
          assert.is_nil(ok)
          assert.are.equal("lost", err.kind)
          assert.are.equal("lost", lost.kind)
          local _, e2 = c:keepalive_once(l.id)
          assert.are.equal("lost", e2.kind)
        end)
      end)

      it("renews 20 leases on one LeaseKeepAlive stream, closed when the last keeper stops", function()
        run(function()
          local c = client()
          local KA = 'grpc_method="LeaseKeepAlive"'
          local function metric(name) return srv:metric(name, 1, KA) or 0 end
          local started, received = metric("grpc_server_started_total"), metric("grpc_server_msg_received_total")
          local handled = metric("grpc_server_handled_total")
          local keepers, ids = {}, {}
          for i = 1, 20 do
            ids[i] = assert(c:grant(2)).id
            keepers[i] = c:keepalive(ids[i], { ttl = 2 })
          end
          -- each keeper renews every 2/3 s: wait for 60 renewals at etcd (3 per lease)
          servers.until_true("60 keepalive requests at etcd", function()
            return metric("grpc_server_msg_received_total") - received >= 60
          end, 20)
          assert.equal(1, metric("grpc_server_started_total") - started)
          assert.equal(1, via._lease_streams(c))
          for i = 1, 20 do
            assert.is_nil(keepers[i].err)
            assert.is_true(assert(c:time_to_live(ids[i])).ttl > 0)
          end
          -- the stream outlives a keeper, not the last one
          keepers[1]:stop()
          assert.equal(1, via._lease_streams(c))
          for i = 2, 20 do keepers[i]:stop() end
          assert.equal(0, via._lease_streams(c))
          -- a lone keepalive_once uses a stream of its own, closed after its reply
          assert.is_true(assert(c:keepalive_once(ids[1])) >= 1)
          assert.equal(0, via._lease_streams(c))
          assert.equal(2, metric("grpc_server_started_total") - started)
          servers.until_true("etcd sees both streams end", function()
            return metric("grpc_server_handled_total") - handled == 2
          end, 10)
        end)
      end)

      it("runs locks and elections", function()
        run(function()
          local a, b = client(), client()
          local l1 = assert(a:lock("glock", { ttl = 5 }))
          -- held: another client's try times out
          local none, err = b:lock("glock", { ttl = 5, timeout = 0.5 })
          assert.is_nil(none)
          assert.are.equal("timeout", err.kind)
          assert(a:unlock(l1))
          local l2 = assert(b:lock("glock", { ttl = 5, timeout = 10 }))
          assert(b:unlock(l2))
          local e = assert(a:campaign("gelect", "me", { ttl = 5, timeout = 10 }))
          local leader = assert(b:leader("gelect"))
          assert.are.equal("me", leader.value)
          assert(a:resign(e))
          assert.is_nil((b:leader("gelect")))
        end)
      end)

      it("carries 300 watches and 3,000 calls on one connection without a stall", function()
        run(function()
          local c = client()
          local port = srv.members[1].port
          -- the client's HTTP/2 connection (the process may hold idle ones of earlier clients)
          assert(c:put("warm-up", "x"))
          local base = sup.connections(port)
          assert.is_true(base >= 1)
          local ws = {}
          for i = 1, 300 do ws[i] = c:watch("many/" .. i) end
          for i = 1, 300 do ready(ws[i]) end
          local t0 = coord.now()
          local sem = coord.semaphore(32)
          local tasks, failures = {}, 0
          for i = 1, 3000 do
            local p = sem:acquire()
            tasks[#tasks + 1] = coord.spawn(function()
              local k = "many/" .. ((i - 1) // 2 % 300 + 1) -- odd i: a put, 5 per key
              local ok, err
              if i % 2 == 1 then ok, err = c:put(k, tostring(i)) else ok, err = c:get(k) end
              if not ok and err then failures = failures + 1 end
              p:release()
            end)
          end
          for _, t in ipairs(tasks) do assert(coord.timeout(60, t.join, t)) end
          assert.are.equal(0, failures)
          -- every watch saw its 5 puts (keys 1..300, puts at odd i: 1500 puts)
          local total = 0
          for i = 1, 300 do
            local n = 0
            while n < 5 do
              local ev = assert(coord.timeout(20, ws[i].next, ws[i]))
              if ev.type == "put" then n = n + 1 end
            end
            total = total + n
          end
          assert.are.equal(1500, total)
          assert.is_true(coord.now() - t0 < 120)
          -- neither the watch stream nor any of the calls opened a connection of its own
          assert.is_true(sup.connections(port) <= base, sup.connections(port) .. " connections, " .. base .. " before")
          assert.are.equal(1, stats(c).streams)
          for i = 1, 300 do ws[i]:close() end
        end)
      end)
    end)
  end

  describe("gRPC watch with auth on etcd " .. version, function()
    local srv
    setup(function() srv = sup.auth_server(version) end)
    teardown(function() if srv then srv:stop() end end)

    it("sends the token as metadata, reports a refusal, and renews an expired token", function()
      run(function()
        local c = sup.client(srv, { user = "alice", password = "alicepw", transport = "grpc" })
        local w1 <close> = c:watch("open/", { prefix = true })
        ready(w1)
        local denied <close> = c:watch("secret")
        local ev, err = coord.timeout(10, denied.next, denied)
        assert.is_nil(ev)
        assert.are.equal("permission", err.kind)
        coord.sleep(3) -- the token's TTL is 2 s: the stream's token goes stale
        local w2 <close> = c:watch("open/b")
        assert(coord.timeout(10, w2.ready, w2))
        assert(srv:ctl("put open/b 2"))
        assert.are.equal("2", assert(coord.timeout(5, w1.next, w1)).kv.value)
        assert.are.equal("2", assert(coord.timeout(5, w2.next, w2)).kv.value)
        -- the refusal made the stream start again with a new token
        assert.are.equal(2, stats(c).streams)
        local bad = sup.client(srv, { user = "alice", password = "wrong", transport = "grpc" })
        local w <close> = bad:watch("open/x")
        ev, err = coord.timeout(10, w.next, w)
        assert.is_nil(ev)
        assert.are.equal("auth", err.kind)
      end)
    end)
  end)

  describe("gRPC watch across a restart of etcd " .. version, function()
    local srv
    setup(function() srv = servers.etcd { version = version } end)
    teardown(function() if srv then srv:stop() end end)

    it("resumes without losing or repeating an event", function()
      run(function()
        local c = sup.client(srv, { transport = "grpc" })
        local w <close> = c:watch("rs", { prefix = true })
        ready(w)
        for i = 1, 5 do put(srv, "rs/" .. i, "a") end
        assert.are.equal(5, #take(w, 5))
        srv:kill(1)
        srv:restart(1)
        for i = 6, 10 do put(srv, "rs/" .. i, "b") end
        local evs = take(w, 5)
        assert.are.same({ "put rs/6=b", "put rs/7=b", "put rs/8=b", "put rs/9=b", "put rs/10=b" }, values(evs))
        assert.is_nil(coord.timeout(0.5, w.next, w))
        assert.is_true(stats(c).streams >= 2)
      end)
    end)
  end)
end
