-- The scheduler: spawn, run, step, sleep, timeout, gather, semaphore, queue, errors.
local coord = require "coord"

describe("coord scheduler", function()
  it("run(fn) returns fn's results and runs spawned coroutines", function()
    local seen = {}
    local a, b = coord.run(function(x)
      coord.spawn(function(y) seen[#seen + 1] = y end, "spawned")
      coord.sleep(0.01)
      return x, "second"
    end, "first")
    assert.are.same({ "first", "second", { "spawned" } }, { a, b, seen })
  end)

  it("run() without fn returns when no work is left", function()
    local order = {}
    coord.spawn(function() coord.sleep(0.02) order[#order + 1] = "slow" end)
    coord.spawn(function() coord.sleep(0.01) order[#order + 1] = "fast" end)
    coord.run()
    assert.are.same({ "fast", "slow" }, order)
  end)

  it("run(fn) raises fn's error", function()
    assert.has_error(function()
      coord.run(function() error("boom", 0) end)
    end, "boom")
  end)

  it("sleep waits at least the requested time, measured with now()", function()
    local t0 = coord.now()
    coord.run(function() coord.sleep(0.05) end)
    assert.is_true(coord.now() - t0 >= 0.049)
  end)

  it("blocks in the main chunk when called outside a coroutine", function()
    local t0 = coord.now()
    coord.sleep(0.02)
    assert.is_true(coord.now() - t0 >= 0.019)
  end)

  it("raises a clear error when a call can neither yield nor block", function()
    local ok, err = pcall(coord.run, function()
      -- table.sort's comparator cannot yield, and the loop is running
      table.sort({ 2, 1 }, function(a, b) coord.sleep(0) return a < b end)
    end)
    assert.is_false(ok)
    assert.matches("cannot wait here", err)
  end)

  it("step() drives the loop from a plain while loop", function()
    local done = false
    coord.spawn(function() coord.sleep(0.02) done = true end)
    local steps = 0
    while coord.step(0.005) do steps = steps + 1 end
    assert.is_true(done)
    assert.is_true(steps >= 1)
    assert.is_false(coord.step())
  end)

  it("fd() gives a pollable descriptor and the time until the next timer", function()
    coord.spawn(function() coord.sleep(0.5) end)
    coord.step()
    local fd, t = coord.fd()
    assert.are.equal("integer", math.type(fd))
    assert.is_true(fd >= 0)
    assert.is_true(t > 0.3 and t <= 0.5)
    coord.run()
  end)

  it("timeout returns fn's results when it finishes in time", function()
    local a, b = coord.run(function()
      return coord.timeout(1, function(x) coord.sleep(0.01) return x, 2 end, 1)
    end)
    assert.are.same({ 1, 2 }, { a, b })
  end)

  it("timeout cancels what fn waits on and returns a timeout error", function()
    local after = false
    local v, err = coord.run(function()
      return coord.timeout(0.02, function()
        coord.sleep(10)
        after = true
      end)
    end)
    assert.is_nil(v)
    assert.are.equal("timeout", err.kind)
    assert.matches("timed out after 0.02 s", tostring(err))
    assert.is_false(after)
  end)

  it("nested timeouts cancel from the inside out", function()
    local v, err = coord.run(function()
      return coord.timeout(0.02, function()
        return coord.timeout(10, coord.sleep, 10)
      end)
    end)
    assert.is_nil(v)
    assert.are.equal("timeout", err.kind)
  end)

  it("timeout outside a coroutine returns as soon as fn is done", function()
    local t = coord.spawn(function() coord.sleep(0.01) return 1 end)
    local t0 = coord.now()
    assert.are.same({ true, 1 }, { coord.timeout(5, t.join, t) })
    assert.is_true(coord.now() - t0 < 2, "returned only when its own timer fired")
  end)

  it("timeout propagates fn's error", function()
    assert.has_error(function()
      coord.run(function() coord.timeout(1, function() error("inner", 0) end) end)
    end, "inner")
  end)

  -- fn's last wake-up and the time limit land in one loop iteration: a task that blocks the
  -- loop past the limit, then ends, wakes fn just before the timer wakes the caller
  local function stall_past(limit)
    return coord.spawn(function()
      coord.sleep(limit / 2)
      local until_t = coord.now() + limit * 2
      while coord.now() < until_t do end
      return "token"
    end)
  end

  it("timeout returns fn's results when fn ended in the iteration its time ran out", function()
    local v, err = coord.run(function()
      local t = stall_past(0.05)
      return coord.timeout(0.05, function() return select(2, t:join()) end)
    end)
    assert.are.same({ "token", nil }, { v, err })
  end)

  it("timeout closes fn's to-be-closed results when its caller is closed before receiving them", function()
    local closed = {}
    local function closable(name)
      return setmetatable({ name = name }, { __close = function(x) closed[#closed + 1] = x.name end })
    end
    coord.run(function()
      -- fn ended, its caller is canceled before it resumes
      local caller
      caller = coord.spawn(function()
        coord.timeout(10, function()
          coord.sleep(0)
          coord.spawn(function() caller:cancel() end)
          return closable("ended"), "plain"
        end)
      end)
      assert.is_false((caller:join()))
      -- fn cancels its caller while it runs, then returns without waiting again
      local caller2
      caller2 = coord.spawn(function()
        coord.timeout(10, function()
          coord.sleep(0)
          caller2:cancel()
          return closable("returned")
        end)
      end)
      assert.is_false((caller2:join()))
    end)
    table.sort(closed)
    assert.are.same({ "ended", "returned" }, closed)
  end)

  it("gather runs functions concurrently and returns packed results in order", function()
    local second_started_before_first_ended
    local started = false
    local a, b = coord.run(function()
      return coord.gather(function()
                            coord.sleep(0.05)
                            second_started_before_first_ended = started
                            return "a"
                          end,
                          function() started = true coord.sleep(0.01) return "b", "c" end)
    end)
    assert.is_true(second_started_before_first_ended)
    assert.are.same({ n = 1, "a" }, a)
    assert.are.same({ n = 2, "b", "c" }, b)
  end)

  it("gather in a coroutine returns when every function finishes without waiting", function()
    local a, b = coord.run(function()
      local x, y = coord.gather(function() return 1 end, function() return 2 end)
      return x[1], y[1]
    end)
    assert.are.same({ 1, 2 }, { a, b })
  end)

  it("gather cancels the others when one fails and raises its error", function()
    local finished = false
    assert.has_error(function()
      coord.run(function()
        coord.gather(function() coord.sleep(0.01) error("failed", 0) end,
                     function() coord.sleep(1) finished = true end)
      end)
    end, "failed")
    coord.run()
    assert.is_false(finished)
  end)

  it("gather raises a function's error even when the error value is nil", function()
    local other_finished = false
    local ok, err = pcall(coord.run, function()
      coord.gather(function() coord.sleep(0.01) error(nil) end,
                   function() coord.sleep(1) other_finished = true end)
      return "returned"
    end)
    assert.is_false(ok)
    assert.is_nil(err)
    coord.run()
    assert.is_false(other_finished)
  end)

  it("gather closes the to-be-closed results nobody receives: when one raises, when its caller is canceled", function()
    local closed = {}
    local function closable(name)
      return setmetatable({ name = name }, { __close = function(x) closed[#closed + 1] = x.name end })
    end
    assert.has_error(function()
      coord.run(function()
        coord.gather(function() return closable("before the failure"), "plain" end,
                     function() coord.sleep(0.01) error("failed", 0) end)
      end)
    end, "failed")
    coord.run(function()
      local caller
      caller = coord.spawn(function()
        return coord.gather(function() coord.sleep(0) return closable("caller canceled") end,
                            function() coord.sleep(0.02) caller:cancel() coord.sleep(10) end)
      end)
      assert.is_false((caller:join()))
    end)
    coord.run()
    table.sort(closed)
    assert.are.same({ "before the failure", "caller canceled" }, closed)
    -- what gather returns is the caller's: nothing of it is closed
    closed = {}
    local a = coord.run(function() return coord.gather(function() return closable("kept") end) end)
    coord.run()
    assert.are.same({}, closed)
    assert.are.equal("kept", a[1].name)
  end)

  it("sends errors of spawned coroutines to the handler, with a traceback", function()
    local got
    local old = coord.on_error(function(err, co, trace) got = { err = err, co = co, trace = trace } end)
    coord.run(function()
      coord.spawn(function() coord.sleep(0) error("lost?", 0) end)
      coord.sleep(0.01)
    end)
    coord.on_error(old)
    assert.are.equal("lost?", got.err)
    assert.are.equal("thread", type(got.co))
    assert.matches("stack traceback", got.trace)
  end)

  it("task:join returns results or the error; task:cancel stops a task", function()
    coord.on_error(function() end)
    coord.run(function()
      local ok_t = coord.spawn(function() coord.sleep(0.01) return 7 end)
      local bad_t = coord.spawn(function() error("nope", 0) end)
      local long_t = coord.spawn(function() coord.sleep(10) end)
      assert.are.same({ true, 7 }, { ok_t:join() })
      assert.are.same({ false, "nope" }, { bad_t:join() })
      coord.sleep(0)
      assert.is_true(long_t:cancel())
      assert.are.equal("canceled", long_t:status())
    end)
    coord.on_error(nil)
  end)

  it("a task canceled before it starts never runs and reports no error", function()
    local reported = {}
    coord.on_error(function(err) reported[#reported + 1] = err end)
    local ran = false
    coord.run(function()
      local t = coord.spawn(function() ran = true end)
      assert.is_true(t:cancel())
      coord.sleep(0)
      assert.are.equal("canceled", t:status())
    end)
    coord.on_error(nil)
    assert.is_false(ran)
    assert.are.same({}, reported)
  end)

  it("task:cancel is safe from the task itself and from code it runs: it stops at its next wait", function()
    local reported = {}
    coord.on_error(function(err) reported[#reported + 1] = err end)
    coord.run(function()
      local closed, after = false, false
      local self_t
      self_t = coord.spawn(function()
        local g <close> = setmetatable({}, { __close = function() closed = true end })
        assert.is_true(self_t:cancel()) -- the task cancels itself while running
        assert.is_false(self_t:cancel())
        assert.are.equal("running", self_t:status())
        coord.sleep(10) -- closed here
        after = true
      end)
      local ok, err = self_t:join()
      assert.are.same({ false, "canceled", true, false }, { ok, err.kind, closed, after })
      assert.are.equal("canceled", self_t:status())

      -- a hook running inside the task (as on_lost runs inside a renewal loop) cancels it
      local hooked
      local function hook() return hooked:cancel() end
      hooked = coord.spawn(function()
        coord.sleep(0)
        assert.is_true(hook())
        return "returned before waiting"
      end)
      local ok2, err2 = hooked:join()
      assert.are.same({ false, "canceled" }, { ok2, err2.kind })

      -- a child started by timeout() cancels the task that runs it
      local parent
      parent = coord.spawn(function()
        coord.timeout(10, function() parent:cancel() coord.sleep(10) end)
        after = true
      end)
      assert.is_false((parent:join()))
      assert.are.equal("canceled", parent:status())
      assert.is_false(after)

      -- a guard of a task being closed cancels that same task
      local closing
      closing = coord.spawn(function()
        local g <close> = setmetatable({}, { __close = function() assert.is_false(closing:cancel()) end })
        coord.sleep(10)
      end)
      coord.sleep(0)
      assert.is_true(closing:cancel())
      assert.are.equal("canceled", closing:status())
    end)
    coord.on_error(nil)
    assert.are.same({}, reported)
  end)

  it("coroutine.close cancels a sleep, so the timer no longer keeps the loop busy", function()
    local co = coroutine.create(function() coord.sleep(10) end)
    coroutine.resume(co)
    assert.are.equal("suspended", coroutine.status(co))
    assert.is_true(coord.step())
    coroutine.close(co)
    assert.is_false(coord.step())
  end)

  it("a waiting coroutine that nobody references can be collected safely", function()
    do
      local q = coord.queue()
      local co = coroutine.create(function() q:get() end)
      coroutine.resume(co)
    end
    collectgarbage()
    collectgarbage()
    assert.is_false(coord.step())
  end)

  it("semaphore bounds concurrency and hands permits out in order", function()
    local sem = coord.semaphore(2)
    local active, peak, order = 0, 0, {}
    coord.run(function()
      local fns = {}
      for i = 1, 6 do
        fns[i] = function()
          local permit <close> = sem:acquire()
          active = active + 1
          peak = math.max(peak, active)
          order[#order + 1] = i
          coord.sleep(0.01)
          active = active - 1
        end
      end
      coord.gather(table.unpack(fns))
    end)
    assert.are.equal(2, peak)
    assert.are.same({ 1, 2, 3, 4, 5, 6 }, order)
    assert.are.equal(2, sem.available)
  end)

  it("a permit granted to a coroutine that is closed before it runs goes back", function()
    local sem = coord.semaphore(1)
    coord.run(function()
      local p = sem:acquire()
      local co = coroutine.create(function() sem:acquire() end)
      coroutine.resume(co) -- waits for the permit
      p:release()          -- granted to co, which has not run yet
      coroutine.close(co)
      assert.is_truthy(sem:try_acquire())
    end)
  end)

  it("semaphore rejects bad arguments", function()
    assert.has_error(function() coord.semaphore(0) end)
    assert.has_error(function() coord.semaphore("2") end)
  end)

  it("queue passes items between producer and consumer, bounded", function()
    local q = coord.queue(2)
    local got = {}
    coord.run(function()
      coord.spawn(function()
        for i = 1, 5 do assert(q:put(i)) end
        q:close()
      end)
      for v in q:items() do got[#got + 1] = v end
    end)
    assert.are.same({ 1, 2, 3, 4, 5 }, got)
    local v, err = q:get()
    assert.is_nil(v)
    assert.are.equal("closed", err.kind)
    assert.has_error(function() q:put(nil) end)
  end)

  it("deadlock in run(fn) is reported instead of hanging", function()
    assert.has_error(function()
      coord.run(function() coord.queue():get() end)
    end, "coord: deadlock: waiting for something that no coroutine, timer or request can deliver")
  end)

  it("raises on wrong argument types", function()
    assert.has_error(function() coord.spawn(42) end)
    assert.has_error(function() coord.sleep("x") end)
    assert.has_error(function() coord.sleep(-1) end)
    assert.has_error(function() coord.timeout(1, "x") end)
    assert.has_error(function() coord.gather(1) end)
    assert.has_error(function() coord.step(-1) end)
  end)
end)
