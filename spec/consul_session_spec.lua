-- coord.consul.session against a real Consul dev agent: the endpoints and self-renewing sessions.
local coord = require "coord"
local consul_mod = require "coord.consul"
local servers = require "servers"

-- Runs a test body as one coroutine: waits inside coord.run, never from the main chunk
-- (the engine's loop can block until the next timer when a wait from the main chunk is
-- completed by another coroutine).
local function run(fn)
  return function() coord.run(fn) end
end

describe("coord.consul.session", function()
  local server, c
  setup(function()
    server = servers.consul {}
    server:wait_node()
    c = consul_mod.new { address = server.address }
  end)
  teardown(function() server:stop() end)

  local function ids(list)
    local t = {}
    for _, e in ipairs(list) do t[e.id] = e end
    return t
  end

  it("creates, reads, lists, renews and destroys a session", run(function()
    local id, cerr, meta = c.session:create { name = "spec", ttl = 10, lock_delay = 0.5, behavior = "delete" }
    assert.is_string(id)
    assert.is_nil(cerr)
    assert.is_table(meta)
    local e = assert(c.session:info(id))
    assert.are.same({ "spec", "coord-test", "delete", 10, 0.5 }, { e.name, e.node, e.behavior, e.ttl, e.lock_delay })
    assert.are.same({ "serfHealth" }, e.node_checks or e.checks)
    assert.are.equal("integer", math.type(e.create_index))
    assert.is_truthy(ids(assert(c.session:list()))[id])
    assert.is_truthy(ids(assert(c.session:node("coord-test")))[id])
    local r = assert(c.session:renew(id))
    assert.are.equal(id, r.id)
    assert.is_true(r.ttl >= 10)
    assert.is_true(c.session:destroy(id))
    local gone, gerr, m = c.session:info(id)
    assert.is_nil(gone)
    assert.is_nil(gerr)
    assert.are.equal("integer", math.type(m.index))
    local nothing, err = c.session:renew(id)
    assert.is_nil(nothing)
    assert.are.same({ "lost", 404 }, { err.kind, err.status })
  end))

  it("creates a session without health checks when given empty lists", run(function()
    local id = assert(c.session:create { checks = {}, node_checks = {} })
    local e = assert(c.session:info(id))
    assert.are.equal(0, #(e.node_checks or {}) + #(e.checks or {}))
    assert.are.equal("release", e.behavior)
    assert.are.equal(15, e.lock_delay)
    assert(c.session:destroy(id))
  end))

  it("blocks on the session list until it changes", run(function()
    local _, _, meta = assert(c.session:list())
    local id
    local t = coord.spawn(function() id = assert(c.session:create { name = "later" }) end)
    local list, _, m = assert(c.session:list { index = meta.index, wait = 10 })
    assert.is_true(t:join())
    assert.is_true(m.index > meta.index)
    assert.is_truthy(ids(list)[id])
    assert(c.session:destroy(id))
  end))

  it("raises on bad arguments", run(function()
    assert.has_error(function() c.session:create("x") end, "bad argument #1 to 'create' (table or nil expected, got string)")
    assert.has_error(function() c.session:renew(nil) end, "bad argument #1 to 'renew' (string expected, got nil)")
    assert.has_error(function() c.session:create { ttl = "15s" } end)
    assert.has_error(function() c.session:node(1) end)
  end))

  it("keeps a session alive until closed, then destroys it", run(function()
    local s = assert(c.session:open { name = "kept", ttl = 10 })
    assert.is_truthy(c.session:info(s.id))
    assert.is_nil(s.lost)
    assert.is_true(s:close())
    assert.is_nil(c.session:info(s.id))
    assert.is_true(s:wait_lost())
    assert.is_true(s:close())
    do
      local s2 <close> = assert(c.session:open { ttl = 10 })
      s = s2
    end
    assert.is_nil(c.session:info(s.id))
  end))

  it("retries renewal for a whole TTL when the agent is gone, then reports the session and its lock lost", run(function()
    local other <close> = servers.consul {}
    other:wait_node()
    local c2 = consul_mod.new { address = other.address, retries = 0 }
    local s = assert(c2.session:open { ttl = 10 })
    local l = assert(c2:lock("gone/.lock", { ttl = 10 }))
    local t0 = coord.now()
    other:stop()
    local _, err = coord.timeout(20, s.wait_lost, s)
    local waited = coord.now() - t0
    assert.are.equal("lost", err.kind)
    assert.are.equal("connect", err.cause.kind)
    assert.is_true(waited > 9 and waited < 13, "lost after " .. waited .. " s")
    _, err = coord.timeout(5, l.wait_lost, l)
    assert.are.equal("lost", err.kind)
    s:close()
    l:unlock()
  end))

  it("reports a self-renewing session lost when it vanishes", run(function()
    local seen
    local s = assert(c.session:open { ttl = 10, on_lost = function(err, obj) seen = { err, obj } end })
    assert(c.session:destroy(s.id))
    -- the next renewal (after TTL/2) gets a 404
    local _, err = coord.timeout(8, s.wait_lost, s)
    assert.are.equal("lost", err.kind)
    assert.are.equal(err, s.lost)
    assert.are.same({ err, s }, seen)
    assert.are.equal(err, select(2, s:wait_lost()))
    assert.is_true(s:close())
  end))

  it("creates a session at once on a freshly started agent", run(function()
    -- no wait_node: the agent has a leader but may not have registered its node yet
    local fresh <close> = servers.consul {}
    local c2 = consul_mod.new { address = fresh.address }
    local id = assert(c2.session:create { ttl = 10 })
    assert.is_truthy(c2.session:info(id))
    local s <close> = assert(c2.session:open { ttl = 10 })
    assert.is_true(c2.session:destroy(id))
  end))

  it("retries create while the session's node and its serfHealth check are not registered yet", run(function()
    -- the two 500s of a fresh agent, made deterministic: a node that registers (first the
    -- node, then its check) only after create was refused for it
    local c3 = consul_mod.new { address = server.address }
    local put, refused = c3._write, {}
    local steps = {
      { Node = "late-node", Address = "127.0.0.2" },
      { Node = "late-node", Address = "127.0.0.2",
        Check = { CheckID = "serfHealth", Name = "Serf Health Status", Status = "passing" } },
    }
    c3._write = function(self, path, ...)
      local res, err, meta = put(self, path, ...)
      if path == "/v1/session/create" and not res then
        refused[#refused + 1] = err.message
        local step = table.remove(steps, 1)
        if step then assert(c.catalog:register(step)) end
      end
      return res, err, meta
    end
    local id = assert(c3.session:create { node = "late-node", ttl = 10 })
    assert.are.same({ "late-node" }, { assert(c.session:info(id)).node })
    assert.are.equal(2, #refused)
    assert.matches("Missing node registration", refused[1], 1, true)
    assert.matches("Missing check 'serfHealth' registration", refused[2], 1, true)
    assert(c.session:destroy(id))
    assert(c.catalog:deregister { Node = "late-node" })
  end))

  it("destroys a self-renewing session whose task is canceled or whose coroutine is closed", run(function()
    local function count()
      return #assert(c.session:list())
    end
    local before = count()
    local got = coord.queue()
    local t = coord.spawn(function()
      local s <close> = assert(c.session:open { ttl = 10 })
      got:put(s)
      coord.sleep(60)
    end)
    local s = got:get()
    assert.are.equal(before + 1, count())
    assert.is_true(t:cancel())
    servers.until_true("session destroyed", function() return c.session:info(s.id) == nil end, 20)
    assert.is_true(s.task.done)
    -- canceled 0 to 3 loop iterations after its create request starts (observed by wrapping
    -- the client's _write), mostly while it is in flight: destroyed once it exists
    local c2 = consul_mod.new { address = server.address }
    local put, armed = c2._write, nil
    c2._write = function(self, path, ...)
      if armed and path == "/v1/session/create" then
        local k, victim = armed.k, armed.task
        armed = nil
        coord.spawn(function()
          for _ = 1, k do coord.sleep(0) end
          victim:cancel()
        end)
      end
      return put(self, path, ...)
    end
    for i = 1, 20 do
      local t2 = coord.spawn(function()
        local s2 <close> = assert(c2.session:open { ttl = 10 })
        coord.sleep(60)
      end)
      armed = { k = i % 4, task = t2 }
      local _, err = t2:join()
      assert.are.equal("canceled", err.kind)
    end
    servers.until_true("no session left", function() return count() == before end, 20)
  end))

  it("lets an on_lost hook close its session without raising", run(function()
    local reported = {}
    local old = coord.on_error(function(err) reported[#reported + 1] = err end)
    local seen = coord.queue()
    local s = assert(c.session:open { ttl = 10, on_lost = function(err, obj)
      assert.is_true(obj:close())
      seen:put(err)
    end })
    assert(c.session:destroy(s.id))
    assert.are.equal("lost", assert(coord.timeout(10, seen.get, seen)).kind)
    assert.is_true(s.task.done)
    coord.on_error(old)
    assert.are.same({}, reported)
  end))
end)
