-- coord.hold: the one lifecycle of what coord holds on a server (Consul sessions, locks and
-- semaphore slots, etcd leases): give it back unless the acquisition committed, release it
-- from any context, and keep it alive with one renewal loop. Internal to coord.

local sched = require "coord.sched"
local core = require "coord.core"
local errors = require "coord.errors"

local M = {}

local pack, unpack, now = table.pack, table.unpack, core.now

-- Runs fn(...) and hands an error to the coroutine error handler instead of raising: a
-- cleanup runs from __close handlers and hooks, where an error would hide the first one.
local function protected(fn, ...)
  local r = pack(xpcall(fn, debug.traceback, ...))
  if not r[1] then
    sched.report(r[2], coroutine.running(), r[2])
    return nil, errors.new("cleanup", "cleanup raised: " .. tostring(r[2]))
  end
  return unpack(r, 2, r.n)
end

--- Runs the cleanup fn(...) now when the running code can wait for it to finish, and returns
--- its results; else (a coroutine being closed by a cancel or a timeout, a task canceled
--- while it runs, a __close outside any coroutine while the loop runs) starts it in a task of
--- its own and returns true. Errors in fn go to the coroutine error handler.
function M.cleanup(fn, ...)
  if sched.can_wait() then return protected(fn, ...) end
  sched.spawn(protected, fn, ...)
  return true
end

--- Stops a background task (t may be nil) from any context: cancels it, unless the caller
--- runs inside it (a hook the task called, such as on_lost), where cancelling would cut the
--- hook's own requests short: the task then ends by itself once the hook returns.
function M.stop(t)
  if t and coroutine.status(t.co) == "suspended" then t:cancel() end
end

local Guard = { __name = "coord.hold.guard" }
Guard.__index = Guard

--- A guard for an acquisition in progress, to be held in a <close> variable: unless
--- guard:commit() was called, leaving its scope in any way (return, error, cancel, timeout,
--- coroutine.close) runs undo(...) through M.cleanup.
function M.guard(undo, ...)
  return setmetatable({ undo = undo, args = pack(...) }, Guard)
end

--- The acquisition succeeded: leaving the scope no longer gives anything back.
function Guard:commit()
  self.undo = nil
end

function Guard:__close()
  local undo = self.undo
  if undo then
    self.undo = nil
    M.cleanup(undo, unpack(self.args, 1, self.args.n))
  end
end

--- Runs fn(...) (typically one write that may be applied, such as a session create or an
--- acquire PUT) in a task of its own and returns its results (fn's error is raised again).
--- If the caller is canceled, closed or timed out before fn returns, fn is not cut short:
--- it runs to its end, then undo(fn's results) runs in the same task, so what the write may
--- have taken is given back.
function M.shield(fn, undo, ...)
  local state = { abandoned = false }
  local t = sched.spawn(function(...)
    local r = pack(pcall(fn, ...))
    if state.abandoned then
      if r[1] then protected(undo, unpack(r, 2, r.n)) else sched.report(r[2], coroutine.running()) end
    end
    return r
  end, ...)
  local g <close> = setmetatable({}, { __close = function()
    if not t.done then state.abandoned = true end
  end })
  local _, r = t:join()
  if not r[1] then error(r[2], 0) end
  return unpack(r, 2, r.n)
end

local BACKOFF, BACKOFF_MAX = 0.25, 1 -- seconds between retries (sched.backoff)

--- Retries a give-back that failed (an idempotent one, such as a lease revoke) in a task of
--- its own: calls fn() after a jittered backoff (0.25 s doubling up to 1 s) until it returns
--- a true value or raises (reported), or `within` seconds have passed. Returns the task.
function M.retry(fn, within)
  return sched.spawn(function()
    local deadline, backoff = now() + within, sched.backoff(BACKOFF, BACKOFF_MAX)
    while now() < deadline do
      sched.sleep(math.min(backoff:delay(), deadline - now()))
      local r = pack(xpcall(fn, debug.traceback))
      if not r[1] then return sched.report(r[2], coroutine.running(), r[2]) end
      if r[2] then return end
    end
  end)
end

---------------------------------------------------------------------------------------------
-- renewal

local Renewal = { __name = "coord.hold.renewal" }
Renewal.__index = Renewal

-- Calls r.running(false) once when the loop ends, however (a return, a cancel, an error).
local Running = { __close = function(g) protected(g.running, false) end }

local function renewal_loop(r)
  if r.running then r.running(true) end
  local _ <close> = r.running and setmetatable({ running = r.running }, Running) or nil
  local last = now()
  local pause, backoff = r.first, sched.backoff(BACKOFF, BACKOFF_MAX)
  while true do
    if pause > 0 then sched.sleep(pause) end
    if r.stopped then return end
    local ttl = r.ttl or 0
    local ok, err = r.renew(math.max(last + ttl - now(), 1))
    if r.stopped then return end
    if ok then
      if type(ok) == "number" then r.ttl = ok end
      last = now()
      backoff:reset()
      pause = (r.ttl or 0) / r.every
    else
      ttl = r.ttl or 0
      if err.kind ~= "lost" and now() - last < ttl then
        pause = math.min(backoff:delay(), math.max(last + ttl - now(), 0))
      else
        if err.kind ~= "lost" then
          local fields = { cause = err }
          for k, v in pairs(r.fields) do fields[k] = v end
          err = errors.new("lost", r.what .. " not renewed for a whole TTL: " .. tostring(err), fields)
        end
        r.stopped = true
        return r.lost(err)
      end
    end
  end
end

--- Keeps something alive in a task of its own. opts: ttl (seconds, nil when unknown yet),
--- every (renew every ttl/every seconds), first (seconds before the first renewal, default
--- ttl/every), renew(left) (one renewal whose timeout is `left`, the seconds until a whole
--- TTL has passed since the last success; returns the new TTL or true, or nil, err), lost(err)
--- (called once from the loop's task, with an error of kind "lost"), running(up) (optional:
--- called with true when the loop's task starts and with false when it ends, however it
--- ends; never if it is stopped before it starts), what (for messages), fields (copied into
--- the lost error). After a failure it retries with a jittered backoff
--- (0.25 s doubling up to 1 s) until a whole TTL has passed since the last success; then, or
--- at once on an error of kind "lost", it reports the loss and ends. Returns the renewal
--- (r.task, r.ttl, r:stop()).
function M.renewal(opts)
  local r = setmetatable({
    ttl = opts.ttl, every = opts.every, renew = opts.renew, lost = opts.lost, running = opts.running,
    what = opts.what, fields = opts.fields or {}, stopped = false,
  }, Renewal)
  r.first = opts.first or (r.ttl or 0) / r.every
  r.task = sched.spawn(renewal_loop, r)
  return r
end

--- Stops renewing, from any context (also from the lost hook, which runs in the loop's task).
function Renewal:stop()
  self.stopped = true
  M.stop(self.task)
end

return M
