-- Write safety against real servers: a write whose connection dies after the server applied
-- it is never sent again (by libcurl or by coord) and is reported as "outcome unknown". The
-- fault comes from spec/peer in proxy mode in front of the real server.
local coord = require "coord"
local helpers = require "helpers"
local servers = require "servers"
local etcd_client = require "etcd_client" -- coord.etcd with the run's transport

-- A read of an absent key through c: it leaves an idle keep-alive connection to reuse.
local function warm_etcd(c)
  local kv, err, h = c:get("ws/warm")
  assert.is_nil(kv)
  assert.is_nil(err)
  assert.is_truthy(h.revision, tostring(h))
end

local function warm_consul(c)
  local e, err, meta = c.kv:get("ws/warm")
  assert.is_nil(e)
  assert.is_nil(err, tostring(err))
  assert.are.equal(404, meta.status, tostring(meta))
end

local function etcd_suite(version)
  -- The peer is an HTTP/1.1 proxy that drops replies: the clients behind it use the JSON gateway
  -- whatever the run's transport (gRPC's own write safety: spec/etcd_grpc_spec.lua).
  describe("etcd " .. version .. " behind a proxy that drops replies", function()
    local etcd, peer, direct
    setup(function()
      etcd = servers.etcd { version = version }
      peer = helpers.start_peer { upstream = etcd.members[1].port }
      direct = etcd_client.new { endpoints = { etcd.endpoint } }
    end)
    teardown(function()
      peer.stop()
      etcd:stop()
    end)

    local function revision()
      local _, _, h = direct:get("ws/none")
      assert.is_truthy(h.revision, tostring(h))
      return h.revision
    end

    it("reports a put whose reply was dropped on a reused connection as maybe applied, sent once", function()
      coord.run(function()
        local c = coord.etcd.new { endpoints = { peer.url("") }, transport = "json" }
        peer.arm("/v3/kv/put")
        local rev0 = revision()
        warm_etcd(c) -- the put goes out on this reused connection
        local ok, err = c:put("ws/put", "once")
        assert.is_nil(ok)
        assert.are.equal("unknown", err.kind)
        assert.is_true(err.maybe_applied)
        assert.are.equal(1, peer.count("/v3/kv/put"))
        local kv = assert(direct:get("ws/put"))
        assert.are.equal("once", kv.value)
        assert.are.equal(1, kv.version)
        assert.are.equal(rev0 + 1, kv.mod_revision)
        assert.are.equal(rev0 + 1, revision())
      end)
    end)

    it("does not repeat a create-if-absent txn on the next endpoint", function()
      coord.run(function()
        local c = coord.etcd.new { endpoints = { peer.url(""), etcd.endpoint }, transport = "json" }
        peer.arm("/v3/kv/txn")
        local rev0 = revision()
        warm_etcd(c)
        local ok, err = c:create("ws/txn", "mine")
        assert.is_nil(ok) -- not false: the create did apply
        assert.are.equal("unknown", err.kind)
        assert.is_true(err.maybe_applied)
        assert.are.equal(1, peer.count("/v3/kv/txn"))
        local kv = assert(direct:get("ws/txn"))
        assert.are.equal("mine", kv.value)
        assert.are.equal(rev0 + 1, kv.create_revision)
        assert.are.equal(rev0 + 1, revision())
      end)
    end)

    it("still answers a read whose reply was dropped (it may be sent again)", function()
      coord.run(function()
        assert(direct:put("ws/read", "r"))
        local c = coord.etcd.new { endpoints = { peer.url("") }, transport = "json" }
        peer.arm("/v3/kv/range")
        local before = peer.count("/v3/kv/range")
        assert(c:put("ws/warm2", "w"))
        local kv, err = c:get("ws/read")
        assert.is_truthy(kv, tostring(err))
        assert.are.equal("r", kv.value)
        assert.are.equal(before + 2, peer.count("/v3/kv/range"))
      end)
    end)

    it("sends a write to the next endpoint when the first refuses the connection", function()
      coord.run(function()
        local c = etcd_client.new { endpoints = { "http://127.0.0.1:" .. servers.free_port(), etcd.endpoint } }
        local ok, err, h = c:put("ws/failover", "v")
        assert.is_true(ok)
        assert.is_nil(err)
        assert.is_truthy(h.revision)
        assert.are.equal("v", assert(direct:get("ws/failover")).value)
      end)
    end)
  end)
end

describe("write safety", function()
  etcd_suite("3.5")
  etcd_suite("3.4")

  describe("etcd values over the gateway's limit", function()
    local etcd
    setup(function() etcd = servers.etcd { version = "3.5" } end)
    teardown(function() etcd:stop() end)

    it("reports a value over 2 MiB as invalid, not exhausted", function()
      coord.run(function()
        local c = etcd_client.new { endpoints = { etcd.endpoint }, timeout = 30 }
        local ok, err = c:put("ws/big", ("x"):rep(3 * 1024 * 1024))
        assert.is_nil(ok)
        assert.are.equal("invalid", err.kind, tostring(err))
        assert.are.equal(429, err.status)
      end)
    end)
  end)

  describe("Consul behind a proxy that drops replies", function()
    local consul, peer, direct
    setup(function()
      consul = servers.consul()
      peer = helpers.start_peer { upstream = consul.port }
      direct = coord.consul.new { address = consul.address }
    end)
    teardown(function()
      peer.stop()
      consul:stop()
    end)

    it("reports a put with cas = 0 whose reply was dropped as maybe applied, never false", function()
      coord.run(function()
        local c = coord.consul.new { address = peer.url("") }
        peer.arm("/v1/kv/ws/cas")
        warm_consul(c)
        local ok, err = c.kv:put("ws/cas", "first", { cas = 0 })
        assert.is_nil(ok)
        assert.are.equal("unknown", err.kind)
        assert.is_true(err.maybe_applied)
        assert.are.equal(1, peer.count("/v1/kv/ws/cas"))
        local e = assert(direct.kv:get("ws/cas"))
        assert.are.equal("first", e.value)
        assert.are.equal(e.create_index, e.modify_index)
      end)
    end)

    it("still answers a read whose reply was dropped", function()
      coord.run(function()
        assert(direct.kv:put("ws/read", "r"))
        local c = coord.consul.new { address = peer.url("") }
        peer.arm("/v1/kv/ws/read")
        warm_consul(c)
        local e, err = c.kv:get("ws/read")
        assert.is_truthy(e, tostring(err))
        assert.are.equal("r", e.value)
        assert.are.equal(2, peer.count("/v1/kv/ws/read"))
      end)
    end)
  end)
end)
