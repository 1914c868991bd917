-- coord.sync: coordination between coroutines: a counting semaphore and a FIFO queue.

local sched = require "coord.sched"
local errors = require "coord.errors"

local M = {}

local function remove(list, x)
  for i = 1, #list do
    if list[i] == x then
      table.remove(list, i)
      return true
    end
  end
  return false
end

---------------------------------------------------------------------------------------------
-- semaphore

local Semaphore = { __name = "coord.semaphore" }
Semaphore.__index = Semaphore

local Permit = { __name = "coord.permit" }
Permit.__index = Permit

--- Returns the permit; releasing twice does nothing.
function Permit:release()
  if self.sem then
    local sem = self.sem
    self.sem = nil
    sem:release()
  end
end
Permit.__close = Permit.release

local function permit(sem)
  return setmetatable({ sem = sem }, Permit)
end

--- A semaphore with n permits.
function M.semaphore(n)
  if math.type(n) ~= "integer" or n < 1 then
    error("bad argument #1 to 'semaphore' (positive integer expected, got " .. tostring(n) .. ")", 2)
  end
  return setmetatable({ available = n, limit = n, waiters = {} }, Semaphore)
end

-- A waiter that was granted a permit but closed before taking it gives the permit back.
local function acquire_cancel(w)
  if w.done then w.sem:release() else remove(w.sem.waiters, w) end
end

-- Waits for a permit (first come, first served) and takes it.
local function take(self)
  if self.available > 0 and #self.waiters == 0 then
    self.available = self.available - 1
    return
  end
  local w = sched.waiter(acquire_cancel)
  w.sem = self
  self.waiters[#self.waiters + 1] = w
  sched.wait(w)
end

--- Waits for a permit (first come, first served) and returns it; the permit can be
--- released with permit:release(), by leaving a <close> scope, or with sem:release().
function Semaphore:acquire()
  take(self)
  return permit(self)
end

-- What _hold returns: closing it gives one permit back.
local Holder = { __name = "coord.semaphore.holder" }
function Holder.__close(h)
  h.sem:release()
end

--- Waits for a permit as acquire does, and returns a value that gives it back when closed
--- (`local h <close> = sem:_hold()`): one value per semaphore, made once, so a permit held for
--- one scope costs no table. For the hot paths of the clients.
function Semaphore:_hold()
  take(self)
  local h = self.holder
  if not h then
    h = setmetatable({ sem = self }, Holder)
    self.holder = h
  end
  return h
end

--- Takes a permit without waiting; nil when none is free.
function Semaphore:try_acquire()
  if self.available > 0 and #self.waiters == 0 then
    self.available = self.available - 1
    return permit(self)
  end
  return nil
end

--- Gives one permit back, handing it straight to the longest waiter if there is one.
function Semaphore:release()
  local waiters = self.waiters
  -- (no call to table.remove when nobody waits: the common case on the clients' hot paths)
  local w = waiters[1] and table.remove(waiters, 1)
  if w then
    sched.wake(w)
  elseif self.available < self.limit then
    self.available = self.available + 1
  else
    error("coord: semaphore released more often than acquired", 2)
  end
end

--- Runs fn(...) holding a permit and returns its results; the permit is released even if
--- fn raises.
function Semaphore:with(fn, ...)
  local p <close> = self:acquire()
  return fn(...)
end

---------------------------------------------------------------------------------------------
-- queue

local Queue = { __name = "coord.queue" }
Queue.__index = Queue

--- A FIFO queue between coroutines, holding at most maxsize items (default: unbounded).
function M.queue(maxsize)
  if maxsize ~= nil and (math.type(maxsize) ~= "integer" or maxsize < 1) then
    error("bad argument #1 to 'queue' (positive integer or nil expected, got " .. tostring(maxsize) .. ")", 2)
  end
  return setmetatable({ buf = {}, head = 1, tail = 0, max = maxsize or math.huge, getters = {}, putters = {} }, Queue)
end

function Queue:len()
  return self.tail - self.head + 1
end
Queue.__len = Queue.len

local function push(q, v)
  q.tail = q.tail + 1
  q.buf[q.tail] = v
end

local function shift(q)
  local v = q.buf[q.head]
  q.buf[q.head] = nil
  q.head = q.head + 1
  return v
end

-- A getter closed after an item was handed to it puts the item back at the front.
local function get_cancel(w)
  if w.done then
    if w.a ~= nil then
      local q = w.q
      q.head = q.head - 1
      q.buf[q.head] = w.a
    end
  else
    remove(w.q.getters, w)
  end
end

local function put_cancel(w)
  if not w.done then remove(w.q.putters, w) end
end

--- Adds v (not nil) to the queue, waiting while it is full. Returns true, or nil and a
--- "closed" error once the queue is closed.
function Queue:put(v)
  if v == nil then error("bad argument #1 to 'put' (value expected, got nil)", 2) end
  if self.closed then return nil, errors.new("closed", "queue is closed") end
  local g = table.remove(self.getters, 1)
  if g then
    sched.wake(g, v)
    return true
  end
  if self:len() >= self.max then
    local w = sched.waiter(put_cancel)
    w.q = self
    self.putters[#self.putters + 1] = w
    if sched.wait(w) == "closed" then return nil, errors.new("closed", "queue is closed") end
    return self:put(v)
  end
  push(self, v)
  return true
end

--- Takes the oldest item, waiting while the queue is empty. After close() the remaining
--- items are still delivered, then nil and a "closed" error.
function Queue:get()
  if self:len() > 0 then
    local v = shift(self)
    local p = table.remove(self.putters, 1)
    if p then sched.wake(p) end
    return v
  end
  if self.closed then return nil, errors.new("closed", "queue is closed") end
  local w = sched.waiter(get_cancel)
  w.q = self
  self.getters[#self.getters + 1] = w
  local v = sched.wait(w)
  if v == nil then return nil, errors.new("closed", "queue is closed") end
  return v
end

--- Closes the queue: waiting getters and putters return a "closed" error.
function Queue:close()
  self.closed = true
  for _, w in ipairs(self.getters) do sched.wake(w, nil) end
  for _, w in ipairs(self.putters) do sched.wake(w, "closed") end
  self.getters, self.putters = {}, {}
end

--- Iterates over items until the queue is closed and empty.
function Queue:items()
  return function()
    return (self:get())
  end
end

return M
