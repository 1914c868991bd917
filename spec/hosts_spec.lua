-- coord as a guest of other event loops and schedulers: coord.pollable (the cqueues polling
-- protocol) and coord.wrap (coord calls from another scheduler's coroutines), against a real
-- etcd and Debian's lua-cqueues.
local coord = require "coord"
local servers = require "servers"
local etcd_client = require "etcd_client" -- coord.etcd with the run's transport
local cqueues = require "cqueues"

-- A foreign scheduler: round robin over its coroutines, resuming each with "round N" whatever
-- it yielded; records every value yielded to it. Bounded in rounds and in time.
local function foreign_run(fns, max_seconds)
  local cos, got = {}, {}
  for i, fn in ipairs(fns) do cos[i] = coroutine.create(fn) end
  local deadline, round = coord.now() + max_seconds, 0
  while coord.now() < deadline do
    round = round + 1
    local alive = 0
    for _, co in ipairs(cos) do
      if coroutine.status(co) == "suspended" then
        local r = table.pack(coroutine.resume(co, "round " .. round))
        assert(r[1], r[2])
        for i = 2, r.n do got[#got + 1] = r[i] end
        if coroutine.status(co) ~= "dead" then alive = alive + 1 end
      end
    end
    if alive == 0 then return got end
  end
  error("foreign scheduler: coroutines still running after " .. max_seconds .. " s")
end

local function coord_private(v)
  local mt = getmetatable(v)
  return type(mt) == "table" and mt.__name == "coord.suspend"
end

describe("coord inside other schedulers", function()
  -- first, while nothing else is pending in coord: closing the host's coroutine cancels
  it("closing the host's coroutine closes the wrapped one and cancels its coord wait", function()
    local closed = false
    local co = coroutine.create(coord.wrap(function()
      local guard <close> = setmetatable({}, { __close = function() closed = true end })
      coord.sleep(30)
    end))
    local ok, v = coroutine.resume(co)
    assert.is_true(ok)
    assert.are.equal(coord.pollable(), v) -- without pause, the host is handed the pollable
    assert.is_true(coord.step(0))          -- coord has work: the 30 s timer
    assert.is_true(coroutine.close(co))
    assert.is_true(closed)
    assert.is_false(coord.step(0))         -- the timer is gone: no work left
  end)

  it("pollable() follows the cqueues protocol: coord's fd, readable, and coord's deadline", function()
    local p = coord.pollable()
    assert.are.equal((coord.fd()), p:pollfd())
    assert.are.equal("r", p:events())
    assert.is_nil(p:timeout())             -- idle: only I/O could wake coord
    local t = coord.spawn(function() coord.sleep(0.2) end)
    assert.are.equal(0, p:timeout())       -- a coroutine is ready to start
    coord.step(0)
    local d = p:timeout()
    assert.is_true(d > 0 and d <= 0.2, tostring(d))
    t:cancel()
  end)

  it("breaking the rule (coord called unwrapped in a foreign coroutine) is reported, naming coord.wrap", function()
    local reported
    local old = coord.on_error(function(err, _, trace) reported = tostring(err) .. "\n" .. tostring(trace) end)
    local co = coroutine.create(function()
      coord.sleep(0.01)          -- yields coord's private value to the foreign resumer
      coroutine.yield("host's")  -- now resumed by coord, which cannot hand this to the host
    end)
    local ok, v = coroutine.resume(co)
    assert.is_true(ok)
    assert.is_true(coord_private(v))
    local deadline = coord.now() + 10
    while not reported and coord.now() < deadline do coord.step(0.01) end
    coord.on_error(old)
    assert.matches("not a coord wait", reported, 1, true)
    assert.matches("coord.wrap", reported, 1, true)
    assert.are.equal("suspended", coroutine.status(co))
  end)

  it("wrap checks its arguments", function()
    assert.has_error(function() coord.wrap(42) end, "bad argument #1 to 'wrap' (function expected, got number)")
    assert.has_error(function() coord.wrap(print, 1) end,
      "bad argument #2 to 'wrap' (function or nil expected, got number)")
  end)

  describe("with etcd", function()
    local server, etcd
    setup(function()
      server = servers.etcd {}
      etcd = etcd_client.new { endpoints = { server.endpoint } }
    end)
    teardown(function()
      if server then server:stop() end
    end)

    it("a foreign scheduler's coroutine calls etcd through coord.wrap and never sees coord's yields", function()
      local log, other_rounds, rounds_at_done = {}, 0, nil
      local got = foreign_run({
        coord.wrap(function(first)
          log[#log + 1] = first
          assert(etcd:put("hosts/a", "1"))
          -- a yield of its own goes to the foreign scheduler, and its answer comes back
          log[#log + 1] = coroutine.yield("mine", 1)
          local kv = assert(etcd:get("hosts/a"))
          log[#log + 1] = kv.value
          rounds_at_done = other_rounds
        end),
        function()
          for _ = 1, 1e6 do
            if rounds_at_done then return end
            other_rounds = other_rounds + 1
            coroutine.yield("other")
          end
        end,
      }, 20)
      assert.are.equal("round 1", log[1])
      assert.matches("^round %d+$", log[2])
      assert.are.equal("1", log[3])
      local mine = 0
      for _, v in ipairs(got) do
        assert.is_false(coord_private(v))
        assert.is_true(v == "mine" or v == 1 or v == "other" or v == coord.pollable(), tostring(v))
        if v == "mine" then mine = mine + 1 end
      end
      assert.are.equal(1, mine)
      assert.is_true(rounds_at_done > 1) -- the other coroutine ran while etcd answered
    end)

    it("an error in the wrapped function is raised in the host's coroutine", function()
      local closed = false
      local co = coroutine.create(coord.wrap(function()
        local guard <close> = setmetatable({}, { __close = function() closed = true end })
        assert(etcd:put("hosts/b", "x"))
        error("boom after a put", 0)
      end))
      local ok, err
      for _ = 1, 1e6 do
        ok, err = coroutine.resume(co)
        if coroutine.status(co) == "dead" then break end
      end
      assert.is_false(ok)
      assert.are.equal("boom after a put", err)
      assert.is_true(closed) -- fn's <close> variables ran
      assert.are.equal("x", assert(etcd:get("hosts/b")).value)
    end)

    it("a cqueues controller drives coord through coord.wrap(fn, cqueues.poll) alone", function()
      local cq = cqueues.new()
      local value, ticks, ticks_at_done = nil, 0, nil
      cq:wrap(coord.wrap(function()
        assert(etcd:put("hosts/cq", "from cqueues"))
        cqueues.sleep(0.01) -- a cqueues wait inside the wrapped function
        value = assert(etcd:get("hosts/cq")).value
        ticks_at_done = ticks
      end, cqueues.poll))
      cq:wrap(function()
        while not ticks_at_done do
          ticks = ticks + 1
          cqueues.sleep(0.005)
        end
      end)
      local deadline = coord.now() + 20
      while not cq:empty() and coord.now() < deadline do assert(cq:step(1)) end
      assert.is_true(cq:empty())
      assert.are.equal("from cqueues", value)
      assert.is_true(ticks_at_done > 0)
    end)
  end)
end)
