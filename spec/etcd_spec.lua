-- spec/etcd_spec.lua: coord.etcd key-value calls against real etcd 3.4 and 3.5 members.

local servers = require "servers"
local etcd_mod = require "coord.etcd"

for _, version in ipairs { "3.4", "3.5" } do
  describe("coord.etcd on etcd " .. version, function()
    local server, etcd

    setup(function()
      server = servers.etcd { version = version }
      etcd = etcd_mod.new { endpoints = { server.endpoint } }
    end)

    teardown(function()
      if server then server:stop() end
    end)

    it("puts and gets a key with exact integer fields", function()
      local h = assert(etcd:put("smoke/a", "1"))
      assert.equal("integer", math.type(h.revision))
      local kv, h2 = etcd:get("smoke/a")
      assert.equal("smoke/a", kv.key)
      assert.equal("1", kv.value)
      assert.equal(h.revision, kv.mod_revision)
      assert.equal(h.revision, kv.create_revision)
      assert.equal(1, kv.version)
      assert.equal(0, kv.lease)
      for _, f in ipairs { "create_revision", "mod_revision", "version", "lease" } do
        assert.equal("integer", math.type(kv[f]))
      end
      assert.equal("integer", math.type(h2.revision))
    end)

    it("reads a missing key as nil, with a header", function()
      local kv, h = etcd:get("smoke/absent")
      assert.is_nil(kv)
      assert.is_true(h.revision > 0)
    end)

    it("lists a prefix and deletes it", function()
      for i = 1, 3 do assert(etcd:put("smoke/p/" .. i, "v" .. i)) end
      local kvs = assert(etcd:range("smoke/p/", { prefix = true }))
      assert.equal(3, #kvs)
      assert.equal(3, kvs.count)
      assert.equal("smoke/p/2", kvs[2].key)
      local n = assert(etcd:delete("smoke/p/", { prefix = true }))
      assert.equal(3, n)
      assert.equal(0, #assert(etcd:range("smoke/p/", { prefix = true })))
    end)

    it("interoperates with etcdctl both ways", function()
      assert(etcd:put("smoke/ctl", "from coord"))
      local ok, out = server:ctl("get --print-value-only smoke/ctl")
      assert.is_true(ok, out)
      assert.equal("from coord\n", out)
      ok, out = server:ctl("put smoke/ctl2 'from etcdctl'")
      assert.is_true(ok, out)
      assert.equal("from etcdctl", etcd:get("smoke/ctl2").value)
    end)
  end)
end
