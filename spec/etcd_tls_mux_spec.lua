-- etcd's JSON gateway over TLS with a watch open: concurrent calls stay multiplexed on one
-- HTTP/2 connection (the watch stream has its own HTTP/1.1 one, or shares the calls' with
-- watch.http2(true)), counted as this process's established TCP connections to etcd.
local coord = require "coord"
local servers = require "servers"
local sup = require "etcd_watch_support"
local watch = require "coord.etcd.watch"
local etcd_client = require "etcd_client"

local curl8 = (tonumber(tostring(coord.versions.libcurl):match("^(%d+)")) or 0) >= 8

-- Runs fn in the loop, then lets the loop finish what closing the watches queued.
local function run(fn)
  coord.run(fn)
  coord.run()
end

local function ready(w)
  local rev, err = coord.timeout(20, w.ready, w)
  assert(rev, tostring(err))
end

-- Runs fn(i) for i = 1..n in n tasks at once and waits for all of them (bounded); every
-- one must succeed.
local function together(n, fn)
  local tasks = {}
  for i = 1, n do tasks[i] = coord.spawn(fn, i) end
  assert(coord.timeout(60, function()
    for i = 1, n do
      local ok, err = tasks[i]:join()
      assert(ok, tostring(err))
    end
    return true
  end))
end

-- Reads events from w until it has seen `want` distinct keys (bounded); returns the set.
local function keys_seen(w, want)
  local seen, n = {}, 0
  assert(coord.timeout(60, function()
    while n < want do
      local ev = assert(w:next())
      if not seen[ev.kv.key] then seen[ev.kv.key], n = true, n + 1 end
    end
    return true
  end))
  return seen
end

for _, version in ipairs { "3.4", "3.5" } do
  describe("etcd over TLS with a watch open on etcd " .. version, function()
    -- a server per test: connections a previous test left in libcurl's cache would count
    local srv
    before_each(function() srv = servers.etcd { version = version, tls = true } end)
    after_each(function() if srv then srv:stop() end srv = nil end)

    -- over gRPC the watch is one more stream on the calls' connection, whatever watch.http2
    -- says (doc/grpc.md); on the gateway, with http2(false), it has an HTTP/1.1 one of its own
    local grpc = etcd_client.grpc()
    local want = grpc and 1 or 2
    local how = grpc and "1 connection: the calls' and the watch's" or "2 connections: the watch's and one for the calls"
    for _, n in ipairs { 16, 200 } do
      it(n .. " concurrent puts and gets take " .. how, function()
        local old = watch.http2(false)
        finally(function() watch.http2(old) end)
        run(function()
          local c = sup.client(srv)
          local w <close> = c:watch("mux/", { prefix = true })
          ready(w)
          together(n, function(i)
            assert(c:put("mux/" .. i, "v" .. i))
            local kv = assert(c:get("mux/" .. i))
            assert.are.equal("v" .. i, kv.value)
          end)
          local seen = keys_seen(w, n)
          for i = 1, n do assert.is_true(seen["mux/" .. i], "no event for mux/" .. i) end
          -- libcurl 7.88 used to open one connection per concurrent call once the watch's
          -- HTTP/1.1 connection existed (17 for 16 puts)
          local conns = sup.connections(srv.members[1].port)
          assert.are.equal(want, conns, conns .. " connections")
          assert.are.equal(1, watch.stats(c).streams)
        end)
      end)
    end

    -- libcurl 7.88 may stall a shared connection under load (doc/etcd-watch.md, HTTP/2): there
    -- the same load runs with the watch on its own connection (7.88's default)
    local conns_expected = curl8 and 1 or 2
    it(("carries 50 watches and 200 writers on %d connection(s) (%s)"):format(conns_expected,
      curl8 and "libcurl 8: shared" or "7.88: the watch's own"), function()
      local old = watch.http2(curl8)
      finally(function() watch.http2(old) end)
      run(function()
        local c = sup.client(srv)
        local W, writers, per = 50, 200, 2 -- each writer: `per` txns of one put to every watch's prefix
        local ws = {}
        for j = 1, W do ws[j] = c:watch("sh/" .. j .. "/", { prefix = true }) end
        for j = 1, W do ready(ws[j]) end
        local readers = {}
        for j = 1, W do readers[j] = coord.spawn(keys_seen, ws[j], writers * per) end
        together(writers, function(i)
          for k = 1, per do
            local ops = {}
            for j = 1, W do ops[j] = { put = "sh/" .. j .. "/" .. i .. "/" .. k, value = "x" } end
            assert(c:txn { success = ops })
            assert(c:get("sh/1/" .. i .. "/" .. k))
          end
        end)
        assert(coord.timeout(60, function()
          for j = 1, W do
            local ok, seen = readers[j]:join()
            assert(ok, tostring(seen))
            for i = 1, writers do
              for k = 1, per do assert.is_true(seen["sh/" .. j .. "/" .. i .. "/" .. k]) end
            end
          end
          return true
        end))
        local conns = sup.connections(srv.members[1].port)
        assert.are.equal(conns_expected, conns, conns .. " connections")
        assert.are.equal(1, watch.stats(c).streams)
        for j = 1, W do ws[j]:close() end
      end)
    end)
  end)
end

describe("coord.etcd.watch.http2", function()
  it("shares the calls' HTTP/2 connection by default on libcurl 8 only", function()
    local default = watch.http2(false)
    watch.http2(default)
    assert.are.equal(curl8, default)
  end)
end)

describe("coord.http address_scope", function()
  it("takes an integer from 0 to 2^32-1 and refuses anything else before sending", function()
    local function req(v)
      return function() coord.http.request { url = "http://127.0.0.1:1/", address_scope = v } end
    end
    local msg = "bad request option 'address_scope' (integer from 0 to 2^32-1 expected)"
    assert.has_error(req(-1), msg)
    assert.has_error(req(1.5), msg)
    assert.has_error(req(1 << 32), msg)
    assert.has_error(req(true), "bad request option 'address_scope' (number expected, got boolean)")
  end)

  it("connects to IPv4 with a scope set, on a connection of its own", function()
    local srv <close> = servers.etcd { version = "3.4", tls = true }
    run(function()
      local tls = srv:client_tls()
      local port = srv.members[1].port
      local before = sup.connections(port)
      local res = assert(coord.http.get(srv.endpoint .. "/version", { tls = tls, address_scope = 7, http_version = "2tls" }))
      assert.are.equal(200, res.status)
      -- the idle connection the harness's health checks left is not reused for it
      assert.are.equal(before + 1, sup.connections(port))
      res = assert(coord.http.get(srv.endpoint .. "/version", { tls = tls, address_scope = 7, http_version = "2tls" }))
      assert.are.equal(200, res.status)
      assert.are.equal(before + 1, sup.connections(port))
    end)
  end)
end)
