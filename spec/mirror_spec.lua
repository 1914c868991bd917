-- spec/mirror_spec.lua: coord.mirror on real etcd and Consul servers: snapshot, changes in
-- order, decoding, waiting, host-loop driving, etcd compaction and Consul index resets.

local coord = require "coord"
local core = require "coord.core"
local servers = require "servers"
local etcd_client = require "etcd_client" -- coord.etcd with the run's transport

-- What the mirror needs of each backend, spelled once. down() takes the only server away,
-- up() brings it back (etcd with its data, Consul as a fresh dev agent); stale_bound is the
-- time doc/mirror.md gives for noticing a server that went away.
local backends = {
  etcd = {
    start = function() return servers.etcd {} end,
    client = function(srv) return etcd_client.new { endpoints = { srv.endpoint } } end,
    put = function(c, k, v) return assert(c:put(k, v)) end,
    delete = function(c, k) return assert(c:delete(k)) end,
    down = function(srv) srv:kill(1) end,
    up = function(srv) srv:restart(1) end,
    stale_bound = 2 * 10, -- 2 x the watch keepalive
  },
  consul = {
    start = function() return servers.consul {} end,
    client = function(srv) return coord.consul.new { address = srv.address } end,
    put = function(c, k, v) return assert(c.kv:put(k, v)) end,
    delete = function(c, k) return assert(c.kv:delete(k)) end,
    down = function(srv) srv.proc:kill() end,
    up = function(srv) srv:restart() end,
    stale_bound = 5, -- the failed read's own time: a refused connection
  },
}

local function synced(m) return m:status().synced end

-- Waits for the first snapshot; a failure says what the mirror last saw go wrong.
local function await_sync(m)
  local ok, err = m:wait(synced, 10)
  assert(ok, ("mirror not synced: %s (last error: %s)"):format(tostring(err), tostring(m:status().error)))
end

for _, name in ipairs { "etcd", "consul" } do
  local b = backends[name]
  describe("coord.mirror on " .. name, function()
    local srv, client
    local n = 0
    -- a fresh prefix per test, so tests do not see each other's keys
    local function prefix()
      n = n + 1
      return ("mirror%d/"):format(n)
    end

    setup(function()
      srv = b.start()
      client = b.client(srv)
    end)
    teardown(function()
      if srv then srv:stop() end
    end)

    it("starts from a snapshot of the prefix and reports each key once", function()
      coord.run(function()
        local p = prefix()
        b.put(client, p .. "a", "1")
        b.put(client, p .. "b", "2")
        b.put(client, p:sub(1, -2) .. "x", "outside") -- shares the text but not the prefix
        local seen = {}
        local m <close> = coord.mirror(client, p, { on_change = function(k, new, old)
          seen[#seen + 1] = { k, new, old }
        end })
        await_sync(m)
        table.sort(seen, function(x, y) return x[1] < y[1] end)
        assert.are.same({ { p .. "a", "1" }, { p .. "b", "2" } }, seen)
        assert.are.equal("1", m:get(p .. "a"))
        local all = {}
        for k, v in pairs(m) do all[k] = v end
        assert.are.same({ [p .. "a"] = "1", [p .. "b"] = "2" }, all)
        local st = m:status()
        assert.is_number(st.since)
        assert.are.equal("integer", math.type(st.revision or st.index))
        assert.is_nil(st.error)
      end)
    end)

    it("follows puts and deletes in order, ending on the final state", function()
      coord.run(function()
        local p = prefix()
        local changes = {}
        local m <close> = coord.mirror(client, p, { on_change = function(k, new, old)
          changes[#changes + 1] = { k, new, old }
        end })
        await_sync(m)
        for i = 1, 50 do b.put(client, p .. "n", tostring(i)) end
        b.put(client, p .. "gone", "x")
        b.delete(client, p .. "gone")
        b.put(client, p .. "last", "done")
        assert.is_true(m:wait(p .. "last", 10))
        assert.are.equal("50", m:get(p .. "n"))
        assert.is_nil(m:get(p .. "gone"))
        -- every change of "n" is reported with the value before it, in order (Consul may
        -- coalesce writes between two listings; etcd reports every revision)
        local prev, count = nil, 0
        for _, c in ipairs(changes) do
          if c[1] == p .. "n" then
            assert.are.equal(prev, c[3])
            assert.is_true(prev == nil or tonumber(c[2]) > tonumber(prev))
            prev, count = c[2], count + 1
          end
        end
        assert.are.equal("50", prev)
        if name == "etcd" then assert.are.equal(50, count) end
      end)
    end)

    it("decodes values, keeping the last good value when one does not decode", function()
      coord.run(function()
        local p = prefix()
        b.put(client, p .. "cfg", '{"speed": 3}')
        local m <close> = coord.mirror(client, p, { decode = core.json_decode })
        assert.is_true(m:wait(p .. "cfg", 10))
        assert.are.equal(3, m:get(p .. "cfg").speed)
        b.put(client, p .. "cfg", "{not json")
        b.put(client, p .. "mark", "{}")
        assert.is_true(m:wait(p .. "mark", 10))
        assert.are.equal(3, m:get(p .. "cfg").speed)
        local err = m:status().error
        assert.are.equal("decode", err.kind)
        assert.are.equal(p .. "cfg", err.key)
      end)
    end)

    it("keeps going when a hook raises, reporting the error", function()
      local reported = {}
      local old = coord.on_error(function(err) reported[#reported + 1] = tostring(err) end)
      coord.run(function()
        local p = prefix()
        local m <close> = coord.mirror(client, p, { on_change = function(k)
          if k:find("bad") then error("hook failed") end
        end })
        await_sync(m)
        b.put(client, p .. "bad", "1")
        b.put(client, p .. "good", "2")
        assert.is_true(m:wait(p .. "good", 10))
      end)
      coord.on_error(old)
      assert.are.equal(1, #reported)
      assert.truthy(reported[1]:find("hook failed", 1, true))
    end)

    it("times out a wait, and wakes waiters with an error when closed", function()
      coord.run(function()
        local p = prefix()
        local m = coord.mirror(client, p)
        local ok, err = m:wait(p .. "never", 0.2)
        assert.is_nil(ok)
        assert.are.equal("timeout", err.kind)
        local t = coord.spawn(function() return m:wait(p .. "never") end)
        await_sync(m)
        m:close()
        local _, res, werr = t:join()
        assert.is_nil(res)
        assert.are.equal("closed", werr.kind)
        assert.is_true(m:status().closed)
        assert.has_error(function() m:wait(42) end)
      end)
    end)

    it("can be closed from its own hook", function()
      coord.run(function()
        local p = prefix()
        local calls = 0
        local m
        m = coord.mirror(client, p, { on_change = function()
          calls = calls + 1
          m:close()
        end })
        b.put(client, p .. "a", "1")
        local ok, err = m:wait(p .. "never", 10)
        assert.is_nil(ok)
        assert.are.equal("closed", err.kind)
        b.put(client, p .. "b", "2")
        assert.are.equal(1, calls)
        assert.is_true(m:status().closed)
      end)
    end)

    it("can be driven from a host loop calling coord.step()", function()
      local p = prefix()
      local writer = b.client(srv)
      local m <close> = coord.mirror(client, p)
      coord.spawn(function() b.put(writer, p .. "speed", "7") end)
      local frames, deadline = 0, coord.now() + 10
      while m:get(p .. "speed") == nil and coord.now() < deadline do
        coord.step(0.05)
        frames = frames + 1
      end
      assert.are.equal("7", m:get(p .. "speed"))
      assert.is_true(frames > 0)
    end)

    it("refuses bad arguments", function()
      assert.has_error(function() coord.mirror({}, "x") end)
      assert.has_error(function() coord.mirror(client, 42) end)
      assert.has_error(function() coord.mirror(client, "x", { decode = "json" }) end)
      assert.has_error(function() coord.mirror(client, "x", { on_stale = true }) end)
      assert.has_error(function() coord.mirror(client, "x", { keepalive = 0 }) end)
    end)

    it("says it is stale when its only server goes away, and recovers when it is back", function()
      local own <close> = b.start()
      local c = b.client(own)
      coord.run(function()
        b.put(c, "stale/a", "1")
        local stale = {}
        local m <close> = coord.mirror(c, "stale/", { max_backoff = 0.5,
          on_stale = function(err) stale[#stale + 1] = err end })
        await_sync(m)
        assert.is_nil(m:status().stale_since)
        local t0 = coord.now()
        b.down(own)
        -- a slow machine gets a few seconds more than the documented bound
        local ok = m:wait(function() return not m:status().synced end, b.stale_bound + 5)
        assert.is_true(ok, "still synced " .. (b.stale_bound + 5) .. " s after the server went away")
        local st = m:status()
        assert.is_true(st.stale_since >= t0 and st.stale_since <= coord.now())
        assert.is_truthy(st.error, "no error given for being stale")
        assert.are.equal(1, #stale)
        assert.are.equal(st.error.kind, stale[1].kind)
        b.up(own)
        assert.is_true(m:wait(synced, 30))
        assert.is_nil(m:status().stale_since)
        b.put(c, "stale/after", "2")
        assert.is_true(m:wait("stale/after", 10))
        assert.are.equal(1, #stale)
      end)
    end)
  end)
end

describe("coord.mirror on etcd", function()
  it("reports the keys of one transaction as one batch", function()
    local srv <close> = servers.etcd {}
    local client = backends.etcd.client(srv)
    coord.run(function()
      local batches = {}
      local m <close> = coord.mirror(client, "t/", { on_batch = function(changes) batches[#batches + 1] = changes end })
      await_sync(m)
      local ok, err = client:txn { success = {
        { put = "t/a", value = "1" }, { put = "t/b", value = "2" } } }
      assert.is_truthy(ok, tostring(err))
      assert.is_true(m:wait("t/b", 10))
      assert.are.equal(1, #batches)
      assert.are.equal(2, #batches[1])
    end)
  end)

  it("takes a fresh snapshot when its revision was compacted, reporting what differs", function()
    local srv <close> = servers.etcd { members = 3 }
    local one = etcd_client.new { endpoints = { srv.members[1].url } }
    local two = etcd_client.new { endpoints = { srv.members[2].url } }
    coord.run(function()
      local changes = {}
      assert(two:put("c/keep", "1"))
      assert(two:put("c/change", "1"))
      assert(two:put("c/remove", "1"))
      local m <close> = coord.mirror(one, "c/", { max_backoff = 0.5, on_change = function(k, new, old)
        changes[#changes + 1] = ("%s:%s>%s"):format(k, tostring(old), tostring(new))
      end })
      await_sync(m)
      changes = {}
      srv:kill(1)
      -- the member may have been the leader: wait for the other two to elect one
      servers.until_true("etcd leader", function() return srv:healthy(2) end, 30)
      assert(two:put("c/change", "2"))
      assert(two:delete("c/remove"))
      local _, _, h = assert(two:put("c/add", "1"))
      assert(two:compact(h.revision))
      srv:restart(1)
      assert.is_true(m:wait(function() return m:get("c/add") == "1" end, 30))
      table.sort(changes)
      assert.are.same({ "c/add:nil>1", "c/change:1>2", "c/remove:1>nil" }, changes)
      assert.are.equal("compacted", m:status().error.kind)
    end)
  end)
end)

describe("coord.mirror on consul", function()
  it("recovers when the agent restarts and its index goes backwards", function()
    local srv <close> = servers.consul {}
    local client = backends.consul.client(srv)
    coord.run(function()
      -- enough writes that the fresh agent's index is sure to start below this one's
      for i = 1, 30 do assert(client.kv:put("r/old", tostring(i))) end
      local m <close> = coord.mirror(client, "r/", { max_backoff = 0.5 })
      assert.is_true(m:wait("r/old", 10))
      local before = m:status().index
      srv:restart()
      assert(client.kv:put("r/new", "2"))
      assert.is_true(m:wait(function() return m:get("r/new") == "2" and m:get("r/old") == nil end, 30))
      assert.is_true(m:status().index < before)
    end)
  end)

  it("takes the new values when a restarted agent gives rewritten keys the same indexes", function()
    local srv <close> = servers.consul { fixed_indexes = true }
    local client = backends.consul.client(srv)
    local keys = { "same/a", "same/b", "same/c" }
    local function write(tag) return srv:write_at_fixed_indexes(client, keys, tag) end
    coord.run(function()
      local before = write("old")
      local m <close> = coord.mirror(client, "same/")
      assert.is_true(m:wait(function() return m:get("same/c") == "old3" end, 10))
      srv:restart()
      local after = write("new")
      assert.are.same(before, after) -- what this test is about
      assert.is_true(m:wait(function()
        return m:get("same/a") == "new1" and m:get("same/b") == "new2" and m:get("same/c") == "new3"
      end, 30), "mirror kept " .. tostring(m:get("same/a")) .. ", " .. tostring(m:get("same/b")))
      assert.is_true(m:status().synced)
    end)
  end)
end)
