-- coord.sched: the scheduler. Coroutines wait on "waiters"; whatever completes a waiter
-- (a reply, a timer, a semaphore) wakes it, and one dispatcher loop resumes the coroutines,
-- always after libcurl and libuv have returned.

local core = require "coord.core"
local errors = require "coord.errors"

local M = {}

local yield, resume, running, status = coroutine.yield, coroutine.resume, coroutine.running, coroutine.status
local isyieldable, close = coroutine.isyieldable, coroutine.close
local now, poll, inflight = core.now, core.poll, core.inflight
local pack, unpack, traceback = table.pack, table.unpack, debug.traceback

local SUSPEND = setmetatable({}, { __name = "coord.suspend" })

-- the ready queue: waiters (and task starts) whose coroutine is to be resumed
local rq, rhead, rtail = {}, 1, 0
-- timers: a binary heap of waiters ordered by (deadline, seq)
local heap, nheap, ntimers, seq = {}, 0, 0, 0
local tasks = setmetatable({}, { __mode = "k" }) -- coroutine -> task, for spawned work
local driving = false
local polled = {}
-- coroutines run by coord.wrap: coord does not resume them itself, it marks them ready and
-- their wrapper (running in the host's coroutine) resumes them. Weak: a host that drops its
-- coroutine without closing it leaves nothing behind once it is collected.
local hosted = setmetatable({}, { __mode = "k" })
local hosted_ready = setmetatable({}, { __mode = "k" })

---------------------------------------------------------------------------------------------
-- errors in coroutines

local function default_handler(err, co, trace)
  io.stderr:write("coord: error in coroutine ", tostring(co), ": ", trace or tostring(err), "\n")
end
local handler = default_handler

--- Sets the function called with (err, coroutine, traceback) when a spawned coroutine
--- raises. nil restores the default (traceback on stderr). Returns the previous one.
function M.on_error(fn)
  if fn ~= nil and type(fn) ~= "function" then
    error("bad argument #1 to 'on_error' (function or nil expected, got " .. type(fn) .. ")", 2)
  end
  local old = handler
  handler = fn or default_handler
  return old
end

--- Hands an error to the handler set with on_error (used by modules that catch errors in
--- user callbacks so that one bad callback does not stop them).
local function report(err, co, trace)
  local ok, herr = pcall(handler, err, co, trace)
  if not ok then
    io.stderr:write("coord: error handler failed: ", tostring(herr), "\nwhile reporting: ", tostring(trace), "\n")
  end
end
M.report = report

---------------------------------------------------------------------------------------------
-- waiters

-- A waiter is what a coroutine suspends on. `cancel(w)` (optional) undoes whatever would
-- complete it; it runs when the waiting coroutine is closed or leaves a <close> scope before
-- it has taken its result (w.done may already be true then: a permit granted, say).
local Waiter = { __name = "coord.waiter" }
function Waiter.__close(w)
  if w.taken then return end
  w.taken = true
  if w.cancel then w:cancel() end
end
M.Waiter = Waiter

function M.waiter(cancel)
  return setmetatable({ cancel = cancel }, Waiter)
end

--- Completes w with up to two results and queues its coroutine. Returns false if w was
--- already complete.
local function wake(w, a, b)
  if w.done then return false end
  w.done, w.a, w.b = true, a, b
  if w.co then
    rtail = rtail + 1
    rq[rtail] = w
  end
  return true
end
M.wake = wake

local tick, drive -- the loop, defined below

--- Suspends the running coroutine until w is woken and returns w's results. Outside any
--- coroutine (or where yielding is impossible) it runs the loop itself until then.
local function wait(w)
  local co, main = running()
  if not main and isyieldable() then
    w.co = co
    local guard <close> = w
    -- w may be done already (a gather whose functions all finished without waiting): its
    -- wake found no coroutine to queue, so yielding now would never be resumed
    while not w.done do yield(SUSPEND) end
    w.taken = true
    return w.a, w.b
  end
  if driving then
    error("coord: cannot wait here: not in a coroutine that can yield, and the loop is already running", 3)
  end
  drive(w)
  w.taken = true
  return w.a, w.b
end
M.wait = wait

---------------------------------------------------------------------------------------------
-- timers

local function heap_less(a, b)
  return a.t < b.t or (a.t == b.t and a.seq < b.seq)
end

local function heap_push(w)
  nheap = nheap + 1
  local i = nheap
  heap[i] = w
  while i > 1 do
    local p = i // 2
    if not heap_less(heap[i], heap[p]) then break end
    heap[i], heap[p] = heap[p], heap[i]
    i = p
  end
end

local function heap_pop()
  local top = heap[1]
  heap[1] = heap[nheap]
  heap[nheap] = nil
  nheap = nheap - 1
  local i = 1
  while true do
    local l, r, m = 2 * i, 2 * i + 1, i
    if l <= nheap and heap_less(heap[l], heap[m]) then m = l end
    if r <= nheap and heap_less(heap[r], heap[m]) then m = r end
    if m == i then break end
    heap[i], heap[m] = heap[m], heap[i]
    i = m
  end
  return top
end

-- A canceled timer stays in the heap (marked dead) until its deadline passes.
local function timer_cancel(w)
  if not w.dead then
    w.dead = true
    ntimers = ntimers - 1
  end
end

--- Arms a timer that wakes w (with value a) after s seconds.
local function add_timer(w, s, a)
  seq = seq + 1
  w.t, w.seq, w.ta = now() + s, seq, a
  ntimers = ntimers + 1
  heap_push(w)
  return w
end

-- The deadline of the first live timer, dropping canceled ones from the top of the heap.
local function next_deadline()
  while nheap > 0 and heap[1].dead do heap_pop() end
  return nheap > 0 and heap[1].t or nil
end

local function fire_timers()
  if nheap == 0 then return end
  local t = now()
  while nheap > 0 and heap[1].t <= t do
    local w = heap_pop()
    if not w.dead then
      w.dead = true
      ntimers = ntimers - 1
      wake(w, w.ta)
    end
  end
end

---------------------------------------------------------------------------------------------
-- tasks

local Task = { __name = "coord.task" }
Task.__index = Task

local function new_task(fn, propagate, ...)
  -- (joiners: made by the first join; most tasks have none, and thousands may be waiting)
  local t = setmetatable({ co = coroutine.create(fn), propagate = propagate, joiners = nil }, Task)
  tasks[t.co] = t
  return t
end

-- Wakes whoever joins t, once it is done.
local function wake_joiners(t)
  local js = t.joiners
  if js then
    t.joiners = nil
    for i = 1, #js do wake(js[i]) end
  end
end

local function finish(t, ok, ...)
  t.done = true
  if ok then
    t.results = pack(...)
  else
    t.failed, t.err = true, ...
    t.traceback = traceback(t.co, tostring(t.err))
    close(t.co) -- runs the coroutine's pending <close> guards: cancels what it waited on
    if not t.propagate then report(t.err, t.co, t.traceback) end
  end
  if t.notify then t:notify() end
  wake_joiners(t)
end

-- Closes a suspended (or not yet started) task's coroutine: its pending <close> guards run,
-- cancelling whatever it waits on; joiners get a "canceled" error.
local function close_task(t)
  t.done, t.canceled, t.failed = true, true, true
  t.err = errors.new("canceled", "task canceled")
  close(t.co) -- its guards still see the task as canceling (M.canceling)
  tasks[t.co] = nil
  wake_joiners(t)
end

-- Closes the to-be-closed values (a table or userdata with a __close metamethod, such as a
-- lock) among packed results that no caller will receive, which gives them back. They are
-- closed in a task of their own: the caller may be the loop, or a coroutine being closed.
local function close_results(r)
  for i = 1, r.n do
    local mt = getmetatable(r[i])
    if type(mt) == "table" and type(mt.__close) == "function" then
      M.spawn(mt.__close, r[i], nil)
    end
  end
end

local function after(co, ok, ...)
  -- the common case first: a coroutine that waits again (only a live one yields SUSPEND)
  if ok and (...) == SUSPEND then
    local t = tasks[co]
    if t and t.canceling then close_task(t) end -- canceled while it ran: it stops at this wait
  elseif status(co) == "dead" then
    local t = tasks[co]
    if t then
      tasks[co] = nil
      if ok and t.canceling then
        close_results(pack(...)) -- canceled while it ran, it returned before waiting again
        return close_task(t)
      end
      finish(t, ok, ...)
    elseif not ok then
      local trace = traceback(co, tostring((...)))
      close(co)
      report((...), co, trace)
    end
  else
    report("coroutine yielded a value to the coord scheduler", co,
      "coroutine yielded a value that is not a coord wait; it will not be resumed (a coroutine "
      .. "that another scheduler runs must call coord inside coord.wrap)")
  end
end

local function step_co(co, ...)
  return after(co, resume(co, ...))
end

--- Starts fn(...) in a new coroutine on the next loop iteration and returns its task.
function M.spawn(fn, ...)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'spawn' (function expected, got " .. type(fn) .. ")", 2)
  end
  local t = new_task(fn, false)
  t.args = pack(...)
  rtail = rtail + 1
  rq[rtail] = t
  return t
end

--- Waits for the task to end; returns true and its results, or false and its error.
function Task:join()
  if not self.done then
    local w = M.waiter(function(w)
      for i, j in ipairs(self.joiners or {}) do
        if j == w then table.remove(self.joiners, i) break end
      end
    end)
    local js = self.joiners
    if not js then
      js = {}
      self.joiners = js
    end
    js[#js + 1] = w
    wait(w)
  end
  if self.failed then return false, self.err end
  return true, unpack(self.results, 1, self.results.n)
end

--- Stops the task, from any context. A waiting (or not yet started) task is closed at once,
--- which cancels whatever it waits on. A task that is running (cancel called by the task
--- itself, or by code it runs such as an on_lost hook) is closed at its next wait instead;
--- if it returns before waiting again it still ends as canceled. Returns true, or false
--- when the task had already ended or was already being canceled.
function Task:cancel()
  if self.done or self.canceling then return false end
  self.canceling = true
  if status(self.co) == "suspended" then close_task(self) end
  return true
end

--- True when the running code can wait for something to complete: a coroutine that can
--- yield and whose task is not being canceled (a canceled task is closed at its next
--- wait), or the main chunk while the loop is not running.
function M.can_wait()
  local co, main = running()
  if main then return not driving end
  local t = tasks[co]
  return isyieldable() and not (t and t.canceling)
end

function Task:status()
  if not self.done then return status(self.co) == "running" and "running" or "waiting" end
  if self.canceled then return "canceled" end
  return self.failed and "failed" or "done"
end

---------------------------------------------------------------------------------------------
-- the loop

local function run_ready()
  local last = rtail
  while rhead <= last do
    local w = rq[rhead]
    rq[rhead] = nil
    rhead = rhead + 1
    local co = w.co
    if w.args then
      -- a task's start; it may have been canceled before it ever ran
      local args = w.args
      w.args = nil
      if not w.done then step_co(co, unpack(args, 1, args.n)) end
    elseif hosted[co] then
      hosted_ready[co] = true
    elseif status(co) == "suspended" then
      step_co(co)
    end
  end
  if rhead > rtail then rhead, rtail = 1, 0 end
end

local function dispatch(owner)
  if owner.stream then
    local w = owner.w
    if w then
      owner.w = nil
      wake(w)
    end
  else
    wake(owner)
  end
end

local function idle(busy)
  return rhead > rtail and ntimers == 0 and busy == 0
end

-- The seconds the loop may block, given a bound t (nil: none): 0 when a coroutine is ready,
-- else no later than the next live timer.
local function block_for(t)
  if rhead <= rtail or next(hosted_ready) ~= nil then return 0 end
  local deadline = next_deadline()
  if deadline then
    local d = deadline - now()
    if d < 0 then d = 0 end
    if t == nil or d < t then t = d end
  end
  return t
end

-- One iteration: resume what is ready, poll I/O for at most `limit` seconds (nil: as long as
-- nothing else is due), fire due timers. Returns the number of requests in flight. When
-- `target` (what the loop is driven for) is done after the resumes, the poll does not block.
function tick(limit, flush, target)
  run_ready()
  local t = (target and target.done) and 0 or block_for(limit)
  if t == nil and inflight() == 0 then t = 0 end
  local n, busy = poll(t, polled, flush)
  for i = 1, n do
    local o = polled[i]
    polled[i] = nil
    dispatch(o)
  end
  fire_timers()
  return busy
end

-- Runs the loop until `target` (a waiter or task) is done, or until there is no work left
-- when target is nil.
function drive(target)
  driving = true
  local ok, err = pcall(function()
    while not (target and target.done) do
      local busy = tick(nil, false, target)
      if idle(busy) and not (target and target.done) then
        if not target then return end
        error("coord: deadlock: waiting for something that no coroutine, timer or request can deliver", 0)
      end
    end
  end)
  driving = false
  if not ok then error(err, 0) end
end

--- Runs the loop. With fn: runs fn(...) as a coroutine until it returns, and returns its
--- results (an error in fn is raised again). Without fn: runs until no work is left.
function M.run(fn, ...)
  if driving then error("coord.run: the loop is already running", 2) end
  if fn == nil then return drive(nil) end
  if type(fn) ~= "function" then
    error("bad argument #1 to 'run' (function or nil expected, got " .. type(fn) .. ")", 2)
  end
  local t = new_task(fn, true)
  t.args = pack(...)
  rtail = rtail + 1
  rq[rtail] = t
  drive(t)
  if t.failed then error(t.err, 0) end
  return unpack(t.results, 1, t.results.n)
end

--- Runs one iteration without blocking, or blocking up to `timeout` seconds, for programs
--- that own their main loop. Returns true while there is work left.
function M.step(timeout)
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
    error("bad argument #1 to 'step' (non-negative number expected, got " .. tostring(timeout) .. ")", 2)
  end
  if driving then error("coord.step: the loop is already running", 2) end
  driving = true
  local ok, busy = pcall(tick, timeout or 0, true)
  driving = false
  if not ok then error(busy, 0) end
  return not idle(busy)
end

--- The descriptor a host loop can poll for readability, and the seconds until coord.step
--- must be called at the latest (nil when only I/O can make progress).
function M.fd()
  local fd, t = core.fd()
  return fd, block_for(t)
end

--- An object following the cqueues polling protocol (pollfd, events, timeout methods), so that
--- a cqueues controller (or cqueues.poll) can wait for coord; after the poll returns the host
--- calls coord.step(0).
local Pollable = { __name = "coord.pollable" }
Pollable.__index = Pollable
function Pollable.pollfd() return (core.fd()) end
function Pollable.events() return "r" end
function Pollable.timeout()
  local _, t = core.fd()
  return block_for(t)
end
local pollable = setmetatable({}, Pollable)
function M.pollable() return pollable end

--- Wraps fn so that it can call coord from inside another scheduler's coroutine: fn runs in a
--- coroutine of its own; its coord waits are kept from the host (the wrapper calls
--- pause(coord.pollable()) in the host's coroutine, then coord.step(0), until the wait is
--- over), and every other yield is passed to the host and the host's answer back to fn.
function M.wrap(fn, pause)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'wrap' (function expected, got " .. type(fn) .. ")", 2)
  end
  if pause ~= nil and type(pause) ~= "function" then
    error("bad argument #2 to 'wrap' (function or nil expected, got " .. type(pause) .. ")", 2)
  end
  pause = pause or yield
  return function(...)
    local co = coroutine.create(fn)
    hosted[co] = true
    -- closing the host's coroutine closes fn's, which cancels what it waits on
    local guard <close> = setmetatable({}, { __close = function()
      hosted[co], hosted_ready[co] = nil, nil
      if status(co) == "suspended" then close(co) end
    end })
    local r = pack(resume(co, ...))
    while true do
      if status(co) == "dead" then
        if not r[1] then
          close(co) -- runs fn's pending <close> variables (an error does not)
          error(r[2], 0)
        end
        return unpack(r, 2, r.n)
      end
      if r[2] == SUSPEND then
        while not hosted_ready[co] do
          pause(pollable)
          if not driving and not hosted_ready[co] then M.step(0) end
        end
        hosted_ready[co] = nil
        r = pack(resume(co))
      else
        r = pack(resume(co, yield(unpack(r, 2, r.n))))
      end
    end
  end
end

---------------------------------------------------------------------------------------------
-- waiting helpers

local function check_seconds(s, fname)
  if type(s) ~= "number" or s ~= s or s < 0 then
    error("bad argument #1 to '" .. fname .. "' (non-negative number of seconds expected, got " .. tostring(s) .. ")", 3)
  end
end

--- A retry delay for a nominal backoff d: between d/2 and d, half fixed and half random, so
--- that clients failing together do not retry together.
function M.jitter(d)
  return d / 2 + math.random() * d / 2
end

local Backoff = { __name = "coord.backoff" }
Backoff.__index = Backoff

--- A retry schedule, the one every retry loop of coord uses: b:delay() is the next pause
--- (base seconds, doubling up to cap, jittered as M.jitter), b:reset() starts over after a
--- success, b.failures counts the delays handed out since.
function M.backoff(base, cap)
  return setmetatable({ base = base, cap = cap, failures = 0 }, Backoff)
end

function Backoff:delay()
  self.failures = self.failures + 1
  return M.jitter(math.min(self.cap, self.base * 2 ^ (self.failures - 1)))
end

function Backoff:reset()
  self.failures = 0
end

--- Suspends the running coroutine for s seconds.
function M.sleep(s)
  check_seconds(s, "sleep")
  wait(add_timer(M.waiter(timer_cancel), s))
end

local function check_fn(fn, i, fname)
  if type(fn) ~= "function" then
    error("bad argument #" .. i .. " to '" .. fname .. "' (function expected, got " .. type(fn) .. ")", 3)
  end
end

-- Starts fn(...) in a child coroutine right away; its errors propagate to the caller.
local function start_child(fn, notify, ...)
  local t = new_task(fn, true)
  t.notify = notify
  step_co(t.co, ...)
  return t
end

-- Ends a child whose caller gives up on it: closed at once when it waits; when it runs (it
-- canceled its own caller), at its next wait, or if it returns first, its results are closed.
local function close_child(t)
  if t.done then return end
  if status(t.co) == "suspended" then
    tasks[t.co] = nil
    t.done = true
    close(t.co)
  else
    t.canceling = true
  end
end

--- Runs fn(...) with a time limit. When s seconds pass first, everything fn waits on is
--- canceled and the result is nil plus a "timeout" error; otherwise fn's results. fn's
--- results are never dropped: when fn ended in the same loop iteration as the time limit
--- (its last reply and the timer came together), they are returned; when the caller is
--- closed after fn ended but before it could resume (or while fn runs, and fn then returns),
--- the results that have a __close metamethod (a lock, a leadership) are closed, which
--- gives them back.
function M.timeout(s, fn, ...)
  check_seconds(s, "timeout")
  check_fn(fn, 2, "timeout")
  local child
  local w = M.waiter(function(w)
    timer_cancel(w)
    if child.results then close_results(child.results) end
    child.results = nil
    close_child(child)
  end)
  child = start_child(fn, function() wake(w) end, ...)
  if not child.done then
    add_timer(w, s, "timeout")
    local why = wait(w)
    timer_cancel(w)
    -- fn may have finished after the timer fired but before this coroutine ran again (both
    -- were ready in one loop iteration): its results count then, for they may hold something
    -- (a lock, a lease) that nobody else could give back
    if why == "timeout" and not child.done then
      close_child(child)
      return nil, errors.new("timeout", ("timed out after %g s"):format(s))
    end
  end
  if child.failed then error(child.err, 0) end
  return unpack(child.results, 1, child.results.n)
end

--- Runs every function in its own coroutine and waits for all. Returns one packed table of
--- results per function (t.n and t[1..n]). If one raises (any value, nil included), the others
--- are canceled and the error is raised again. Results nobody will receive (those of the
--- functions that ended, when one raises or the caller is canceled) are not dropped: the
--- ones with a __close metamethod (a lock, a leadership) are closed, as coord.timeout does.
function M.gather(...)
  local n = select("#", ...)
  local fns = { ... }
  for i = 1, n do check_fn(fns[i], i, "gather") end
  local children, left = {}, n
  local function abandon()
    for i = 1, #children do
      local c = children[i]
      if c.results then close_results(c.results) end
      c.results = nil
      close_child(c)
    end
  end
  local w = M.waiter(abandon)
  local function notify(t)
    left = left - 1
    if t.failed then wake(w, t) elseif left == 0 then wake(w) end
  end
  for i = 1, n do
    if w.done then break end
    children[i] = start_child(fns[i], notify)
  end
  local failed = n > 0 and wait(w) or nil
  if failed then
    abandon()
    error(failed.err, 0)
  end
  local out = {}
  for i = 1, n do out[i] = children[i].results end
  return unpack(out, 1, n)
end

return M
