-- coord.consul and the 0.2 return convention (value, err, meta), consul:request, and the
-- per-call timeout of a blocking read, against real Consul dev agents.
local coord = require "coord"
local consul_mod = require "coord.consul"
local errors = require "coord.errors"
local servers = require "servers"

local master = "6a1d2c3b-convention-master-token"

describe("coord.consul return convention", function()
  local server, c
  setup(function()
    server = servers.consul { args = "-log-level=debug" }
    c = consul_mod.new { address = server.address }
  end)
  teardown(function() server:stop() end)

  it("reads an absent key as nil, nil, meta", function()
    local e, err, meta = c.kv:get("conv/absent")
    assert.is_nil(e)
    assert.is_nil(err)
    assert.are.equal("integer", math.type(meta.index))
    assert.are.equal(404, meta.status)
    local n = select("#", c.kv:get("conv/absent"))
    assert.are.equal(3, n)
  end)

  it("answers a lost cas with false, nil, meta and a write with true, nil, meta", function()
    local ok, err, meta = c.kv:put("conv/cas", "1", { cas = 0 })
    assert.is_true(ok)
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    assert.matches("^consul%.meta{", tostring(meta))
    ok, err, meta = c.kv:put("conv/cas", "2", { cas = 0 })
    assert.is_false(ok)
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    assert.are.equal("1", c.kv:get("conv/cas").value)
    ok, err = c.kv:delete("conv/cas", { cas = 1 })
    assert.is_false(ok)
    assert.is_nil(err)
  end)

  it("gives the same meta fields whichever way they are first read", function()
    assert(c.kv:put("conv/meta", "v"))
    local _, _, by_field = c.kv:get("conv/meta")
    local fields = { index = by_field.index, known_leader = by_field.known_leader,
      last_contact = by_field.last_contact, status = by_field.status }
    assert.are.equal("integer", math.type(fields.index))
    local _, _, by_pairs = c.kv:get("conv/meta")
    local listed = {}
    for k, v in pairs(by_pairs) do listed[k] = v end
    assert.are.same(fields, listed)
    local _, _, by_tostring = c.kv:get("conv/meta")
    assert.are.equal(tostring(by_pairs), tostring(by_tostring))
    local _, _, written = c.kv:get("conv/meta")
    written.mine = 1
    assert.are.equal(fields.index, written.index)
  end)

  it("gives meta and errors a readable tostring", function()
    local _, _, meta = c.kv:get("conv/absent")
    local s = tostring(meta)
    assert.matches("^consul%.meta{", s)
    assert.matches("index=" .. meta.index, s, 1, true)
    local none, err = c.kv:get("conv/k", { dc = "nowhere" })
    assert.is_nil(none)
    assert.is_true(errors.is(err))
    assert.matches("datacenter", tostring(err))
    assert.is_nil(tostring(err):find("table: 0x", 1, true))
    -- assert raises with the error's text, not a table address
    local ok, msg = pcall(function() return assert(c.kv:get("conv/k", { dc = "nowhere" })) end)
    assert.is_false(ok)
    assert.matches("datacenter", tostring(msg))
  end)

  it("yields value, nil, meta from each step of a watch, and false for an absent key", function()
    coord.run(function()
      local w <close> = c.kv:watch("conv/w", { wait = 1 })
      local v, err, meta = w:next()
      assert.is_false(v)
      assert.is_nil(err)
      assert.are.equal("integer", math.type(meta.index))
      assert(c.kv:put("conv/w", "x"))
      v, err, meta = w:next()
      assert.are.equal("x", v.value)
      assert.is_nil(err)
      assert.is_true(meta.index >= v.modify_index)
    end)
  end)

  it("closes a watch left by break in a for loop (the for's closing value)", function()
    coord.run(function()
      assert(c.kv:put("conv/brk", "1"))
      -- the watch, as the four values a generic for receives
      local f, s, ctl, closing = c.kv:watch("conv/brk")
      local w = closing
      for e in f, s, ctl, closing do
        assert.are.equal("1", e.value)
        break
      end
      assert.is_true(w.closed)
      local n = w:requests()
      assert.is_nil((w:next()))
      assert.are.equal(n, w:requests(), "a closed watch sends nothing")
      -- a shared query stops with its last watcher
      local g1, g2, g3, ws = c.kv:watch("conv/sh/k", { share = "conv/sh/" })
      for _ in g1, g2, g3, ws do break end
      assert.is_true(ws.closed)
      assert.is_nil(next(c._shared))
    end)
  end)

  it("ends a consul:watch whose function returns the old value, meta shape, with kind invalid", function()
    coord.run(function()
      local n = 0
      local f, s, ctl, w = c:watch(function(o) return c.kv:list("conv/", o) and "x", { index = 1 } end)
      for _ in f, s, ctl, w do n = n + 1 end
      assert.are.equal(0, n)
      assert.are.equal("invalid", w.error.kind)
      assert.matches("return value, err, meta", w.error.message, 1, true)
      assert.are.equal(1, w:requests())
    end)
  end)

  it("checks self and arguments of the lock, election and semaphore objects", function()
    local e = c:election("conv/el")
    assert.has_error(function() e.leader() end, "calling 'leader' on bad self (use ':')")
    assert.has_error(function() e:leader(5) end, "bad argument #1 to 'leader' (table or nil expected, got integer)")
    assert.has_error(function() e:campaign(5) end, "bad argument #1 to 'campaign' (string or nil expected, got integer)")
    local sem = c:semaphore("conv/sem", 1)
    assert.has_error(function() sem.acquire() end, "calling 'acquire' on bad self (use ':')")
    assert.has_error(function() sem:acquire("x") end, "bad argument #1 to 'acquire' (table or nil expected, got string)")
    assert.has_error(function() sem:acquire { timeout = "1" } end,
      "bad option 'timeout' to 'acquire' (number expected, got string)")
  end)

  it("reads a txn that was rolled back as an answer, not an error", function()
    local res, err, meta = c.txn:run { { verb = "check-index", key = "conv/nokey", index = 12345 } }
    assert.is_nil(err)
    assert.is_false(res.applied)
    assert.are.equal(1, res.errors[1].op)
    assert.are.equal(409, meta.status)
  end)

  describe("consul:request", function()
    it("GETs an endpoint coord does not wrap: body, nil, meta", function()
      local body, err, meta = c:request { path = "/v1/agent/metrics" }
      assert.is_nil(err)
      assert.is_table(body.Gauges)
      assert.are.equal(200, meta.status)
      assert.matches("^consul%.meta{", tostring(meta))
      -- with a query, and a raw body
      assert(c.kv:put("conv/req", "raw value"))
      body = assert(c:request { path = "/v1/kv/conv/req", query = { raw = true }, raw = true })
      assert.are.equal("raw value", body)
    end)

    it("PUTs a body (a table as JSON) and returns the decoded reply", function()
      local body, err, meta = c:request { method = "PUT", path = "/v1/kv/conv/put", body = "via request" }
      assert.is_nil(err)
      assert.is_true(body)
      assert.are.equal(200, meta.status)
      assert.are.equal("via request", c.kv:get("conv/put").value)
      local q = assert(c:request { method = "POST", path = "/v1/query",
        body = { Name = "conv-q", Service = { Service = "web" } } })
      assert.is_string(q.ID)
      assert(c:request { method = "DELETE", path = "/v1/query/" .. q.ID })
    end)

    it("returns nil, err with kind, status and the server's message for a non-2xx reply", function()
      local body, err = c:request { path = "/v1/query/00000000-0000-0000-0000-000000000000" }
      assert.is_nil(body)
      assert.are.equal("not_found", err.kind)
      assert.are.equal(404, err.status)
      assert.is_string(err.message)
      body, err = c:request { method = "PUT", path = "/v1/session/create", body = "{not json" }
      assert.is_nil(body)
      assert.are.equal("invalid", err.kind)
      assert.are.equal(400, err.status)
    end)

    it("blocks with index and wait like every read", function()
      assert(c.kv:put("conv/blk", "1"))
      local _, _, meta = assert(c:request { path = "/v1/kv/conv/blk" })
      local t0 = coord.now()
      local _, err, m2 = c:request { path = "/v1/kv/conv/blk", index = meta.index, wait = 0.3 }
      assert.is_nil(err)
      assert.is_true(coord.now() - t0 >= 0.25)
      assert.are.equal(meta.index, m2.index)
    end)

    it("raises on bad arguments", function()
      assert.has_error(function() c:request() end, "bad argument #1 to 'request' (table expected, got nil)")
      assert.has_error(function() c:request { path = "v1/kv/x" } end)
      assert.has_error(function() c:request { path = "/v1/kv/x", method = 1 } end,
        "bad option 'method' to 'request' (string expected, got integer)")
      assert.has_error(function() c:request { path = "/v1/kv/x", body = true } end)
      assert.has_error(function() c.request({ path = "/v1/kv/x" }) end, "calling 'request' on bad self (use ':')")
    end)
  end)

  describe("a blocking read's per-call timeout", function()
    it("caps the whole call: the wait is shortened so the agent answers first", function()
      assert(c.kv:put("conv/cap", "1"))
      local _, _, meta = c.kv:get("conv/cap")
      local t0 = coord.now()
      -- wait 60 s, timeout 5 s: Consul is asked to wait (5 - 0.5) * 16/17 s, and answers
      -- within 4.5 s (its jitter adds up to wait/16), leaving 0.5 s for the reply
      local e, err, m2 = c.kv:get("conv/cap", { index = meta.index, wait = 60, timeout = 5 })
      local dt = coord.now() - t0
      assert.is_nil(err, tostring(err))
      assert.are.equal("1", e.value)
      assert.are.equal(meta.index, m2.index, "nothing changed: the wait ran out")
      assert.is_true(dt < 5, "returned after " .. dt)
      assert.is_true(dt >= 4, "returned after " .. dt)
      -- the request went out with the shortened wait
      local sent
      for line in io.lines(server.dir .. "/consul.log") do
        local w = line:match("/v1/kv/conv/cap%?[^ ]*wait=(%d+ms)")
        if w then sent = w end
      end
      assert.are.equal("4236ms", sent)
    end)
  end)
end)

describe("coord.consul:request with ACLs", function()
  local server
  setup(function() server = servers.consul { acl = master } end)
  teardown(function() server:stop() end)

  it("reports a 403 as kind permission, and sends the token of the client or of the call", function()
    local anon = consul_mod.new { address = server.address }
    local body, err = anon:request { path = "/v1/acl/policies" }
    assert.is_nil(body)
    assert.are.equal("permission", err.kind)
    assert.are.equal(403, err.status)
    local list, lerr = anon:request { path = "/v1/acl/policies", token = master }
    assert.is_nil(lerr)
    assert.is_table(list)
    assert.is_string(list[1].Name)
  end)
end)
