-- coord.consul against a real Consul dev agent: the client, the transport and the KV store.
local coord = require "coord"
local consul_mod = require "coord.consul"
local core = require "coord.core"
local servers = require "servers"

describe("coord.consul", function()
  local server, c
  setup(function()
    server = servers.consul {}
    c = consul_mod.new { address = server.address }
  end)
  teardown(function() server:stop() end)

  -- The agent registers its own node shortly after electing itself: block on the catalog
  -- (blocking queries, at most 20 reads) until it is there.
  local function await_node()
    local node, err, meta = c.catalog:node("coord-test")
    for _ = 1, 20 do
      assert.is_nil(err)
      if node then return end
      node, err, meta = c.catalog:node("coord-test", { index = meta.index, wait = 2 })
    end
    assert(node, "the agent did not register its node")
  end

  describe("_call", function()
    it("returns status, decoded body and meta", function()
      await_node()
      local res = assert(c:_call("GET", "/v1/catalog/nodes"))
      assert.are.equal(200, res.status)
      assert.are.equal("coord-test", res.body[1].Node)
      assert.is_true(res.meta.known_leader)
      assert.are.equal("integer", math.type(res.meta.index))
    end)

    it("returns an error with the kind of its status and the server's text, or accepts listed statuses", function()
      local res, err = c:_call("PUT", "/v1/session/create", { body = "{not json" })
      assert.is_nil(res)
      assert.are.equal("invalid", err.kind)
      assert.are.equal(400, err.status)
      assert.is_truthy(err.message ~= "")
      res = assert(c:_call("GET", "/v1/kv/absent", { ok = { 404 } }))
      assert.are.equal(404, res.status)
      assert.is_nil(res.body)
    end)

    it("keeps the raw body when asked, and sends tables as JSON", function()
      assert(c:_call("PUT", "/v1/kv/call/raw", { body = { a = 1 } }))
      local res = assert(c:_call("GET", "/v1/kv/call/raw", { query = { raw = true }, raw = true }))
      assert.are.equal('{"a":1}', res.body)
    end)

    it("blocks with index and wait, and returns when the wait is over", function()
      assert(c.kv:put("call/block", "1"))
      local _, _, meta = assert(c.kv:get("call/block"))
      local t0 = coord.now()
      local res = assert(c:_call("GET", "/v1/kv/call/block", { index = meta.index, wait = 0.3 }))
      local dt = coord.now() - t0
      assert.is_true(dt >= 0.25, "returned after " .. dt)
      assert.are.equal(meta.index, res.meta.index)
    end)
  end)

  describe("kv", function()
    it("puts, gets, lists, lists keys and deletes", function()
      assert.is_true((c.kv:put("kv/a", "one")))
      assert.is_true((c.kv:put("kv/b/c", "two", { flags = 42 })))
      local e, err, meta = c.kv:get("kv/a")
      assert.is_nil(err)
      assert.are.equal("kv/a", e.key)
      assert.are.equal("one", e.value)
      assert.are.equal(0, e.flags)
      assert.are.equal("integer", math.type(e.modify_index))
      assert.are.equal(e.modify_index, e.create_index)
      assert.are.equal(0, e.lock_index)
      assert.is_nil(e.session)
      assert.is_true(meta.index >= e.modify_index)
      assert.are.equal("one", (c.kv:get("kv/a", { raw = true })))
      local list = c.kv:list("kv/")
      assert.are.equal(2, #list)
      assert.are.equal("kv/b/c", list[2].key)
      assert.are.equal(42, list[2].flags)
      assert.are.same({ "kv/a", "kv/b/c" }, (c.kv:keys("kv/")))
      assert.are.same({ "kv/a", "kv/b/" }, (c.kv:keys("kv/", { separator = "/" })))
      assert.is_true((c.kv:delete("kv/a")))
      assert.is_nil((c.kv:get("kv/a")))
      assert.is_true((c.kv:delete("kv/", { recurse = true })))
      assert.are.same({}, (c.kv:list("kv/")))
      assert.are.same({}, (c.kv:keys("kv/")))
    end)

    it("stores values of any bytes", function()
      local all = {}
      for i = 0, 255 do all[#all + 1] = string.char(i) end
      local bytes = table.concat(all):rep(4)
      assert.is_true((c.kv:put("bin", bytes)))
      assert.are.equal(bytes, c.kv:get("bin").value)
      assert.are.equal(bytes, (c.kv:get("bin", { raw = true })))
      assert.is_true((c.kv:put("empty", "")))
      assert.are.equal("", c.kv:get("empty").value)
    end)

    it("escapes keys: spaces, ?, #, %, unicode and / kept as the hierarchy", function()
      local keys = { "esc/a b", "esc/what?x=1", "esc/hash#frag", "esc/100%25", "esc/é ü/漢字", "esc/plus+amp&eq=" }
      for i, k in ipairs(keys) do assert.is_true((c.kv:put(k, "v" .. i))) end
      for i, k in ipairs(keys) do
        local e = c.kv:get(k)
        assert.are.equal(k, e.key)
        assert.are.equal("v" .. i, e.value)
      end
      local names = c.kv:keys("esc/")
      table.sort(names)
      local want = { table.unpack(keys) }
      table.sort(want)
      assert.are.same(want, names)
      assert.are.same({ "esc/é ü/" }, (c.kv:keys("esc/é", { separator = "/" })))
      -- the CLI sees the same keys
      local ok, out = server:consul("kv get " .. servers.sh_quote("esc/what?x=1"))
      assert.is_true(ok, out)
      assert.are.equal("v2\n", out)
      ok, out = server:consul("kv get " .. servers.sh_quote("esc/é ü/漢字"))
      assert.are.equal("v5\n", out)
    end)

    it("round-trips flags above 2^63 exactly, as the uint64 with the same bits", function()
      local lock_flag = 0x2ddccbc058a50c18
      local sem_flag = 0xe0f69a2baa414de0 -- hex literals wrap: the same 64 bits
      assert.are.equal(core.u64("16210313421097356768"), sem_flag)
      assert.is_true((c.kv:put("flags/lock", "", { flags = lock_flag })))
      assert.is_true((c.kv:put("flags/sem", "", { flags = sem_flag })))
      assert.is_true((c.kv:put("flags/max", "", { flags = -1 })))
      assert.are.equal(lock_flag, c.kv:get("flags/lock").flags)
      local e = c.kv:get("flags/sem")
      assert.are.equal("integer", math.type(e.flags))
      assert.are.equal(sem_flag, e.flags)
      assert.are.equal(-1, c.kv:get("flags/max").flags)
      local ok, out = server:consul("kv get -detailed flags/sem")
      assert.is_true(ok, out)
      assert.matches("Flags%s+16210313421097356768", out)
      assert(server:consul("kv put -flags=18446744073709551615 flags/cli x"))
      assert.are.equal(-1, c.kv:get("flags/cli").flags)
    end)

    it("puts with cas (0 = only when absent) and deletes with cas", function()
      assert.is_true((c.kv:put("cas/k", "1", { cas = 0 })))
      assert.is_false((c.kv:put("cas/k", "2", { cas = 0 })))
      local e = c.kv:get("cas/k")
      assert.is_false((c.kv:put("cas/k", "3", { cas = e.modify_index + 1000 })))
      assert.is_true((c.kv:put("cas/k", "3", { cas = e.modify_index })))
      assert.are.equal("3", c.kv:get("cas/k").value)
      assert.is_false((c.kv:delete("cas/k", { cas = e.modify_index })))
      assert.is_true((c.kv:delete("cas/k", { cas = c.kv:get("cas/k").modify_index })))
      assert.is_nil((c.kv:get("cas/k")))
    end)

    it("acquires and releases a key with a session", function()
      await_node() -- sessions need the agent's own node in the catalog
      local res = assert(c:_call("PUT", "/v1/session/create", { body = { TTL = "30s" } }))
      local id = res.body.ID
      assert.is_true((c.kv:put("held", "me", { acquire = id })))
      local e = c.kv:get("held")
      assert.are.equal(id, e.session)
      assert.are.equal(1, e.lock_index)
      local other = assert(c:_call("PUT", "/v1/session/create", { body = {} })).body.ID
      assert.is_false((c.kv:put("held", "you", { acquire = other })))
      assert.is_false((c.kv:put("held", "you", { release = other })))
      assert.is_true((c.kv:put("held", "free", { release = id })))
      assert.is_nil(c.kv:get("held").session)
      assert(c:_call("PUT", "/v1/session/destroy/" .. id))
      assert(c:_call("PUT", "/v1/session/destroy/" .. other))
    end)

    it("blocks get, list and keys on an index until a change", function()
      assert(c.kv:put("blk/a", "1"))
      local _, _, meta = c.kv:get("blk/a")
      local got = coord.run(function()
        local r = {}
        local t = coord.spawn(function()
          r.get = c.kv:get("blk/a", { index = meta.index, wait = 10 })
        end)
        local t2 = coord.spawn(function()
          r.list = c.kv:list("blk/", { index = meta.index, wait = 10 })
        end)
        local t3 = coord.spawn(function()
          r.keys = c.kv:keys("blk/", { index = meta.index, wait = 10 })
        end)
        coord.sleep(0.2)
        assert.is_nil(r.get)
        assert(c.kv:put("blk/a", "2"))
        t:join() t2:join() t3:join()
        return r
      end)
      assert.are.equal("2", got.get.value)
      assert.are.equal("2", got.list[1].value)
      assert.are.same({ "blk/a" }, got.keys)
    end)

    it("takes per-call dc, consistency and token overrides", function()
      local _, _, meta = c.kv:get("kv/none", { consistency = "stale" })
      assert.are.equal("integer", math.type(meta.index))
      local _, err = c.kv:get("kv/none", { dc = "nowhere" })
      assert.are.equal("http", err.kind)
      assert.are.equal(500, err.status)
      assert.matches("datacenter", err.message)
      local e2 = select(3, c.kv:get("kv/none", { consistent = true }))
      assert.is_true(e2.known_leader)
      local cs = consul_mod.new { address = server.address, consistency = "stale", datacenter = "dc1" }
      assert.is_true((cs.kv:put("over", "x")))
      assert.are.equal("x", cs.kv:get("over").value)
    end)

    it("raises on wrong argument types", function()
      assert.has_error(function() c.kv:get(1) end, "bad argument #1 to 'get' (string expected, got number)")
      assert.has_error(function() c.kv:put("k", nil) end, "bad argument #2 to 'put' (string expected, got nil)")
      assert.has_error(function() c.kv:put("k", "v", { flags = 1.5 }) end)
      assert.has_error(function() consul_mod.new { consistency = "eventual" } end)
      -- keys Consul's router would redirect to another key
      for _, k in ipairs { "/lead", "a//b", "a/./b", "a/../b", ".", ".." } do
        assert.has_error(function() c.kv:put(k, "v") end)
      end
      assert.is_true((c.kv:put("dots/a.b/..c/...", "v")))
      assert.are.equal("dots/a.b/..c/...", c.kv:get("dots/a.b/..c/...").key)
    end)

    it("reads an absent key as nil with the index", function()
      local e, err, meta = c.kv:get("kv/none")
      assert.is_nil(e)
      assert.is_nil(err)
      assert.are.equal("integer", math.type(meta.index))
      assert.is_nil((c.kv:get("kv/none", { raw = true })))
    end)
  end)
end)
