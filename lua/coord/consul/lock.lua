-- coord.consul.lock: a lock on one key by the Go client's recipe (api/lock.go), so coord and
-- `consul lock` exclude each other, and leader election on top of it.

local sched = require "coord.sched"
local core = require "coord.core"
local errors = require "coord.errors"
local session = require "coord.consul.session"
local hold = require "coord.hold"
local args = require "coord.args"

local M = {}

--- The flag the Go client puts on lock keys (a semaphore's keys carry another one).
M.FLAG = 0x2ddccbc058a50c18

local WAIT = 15         -- seconds one blocking read waits while the lock is taken
local RETRY = 5         -- pause after an acquire refused by a lock-delay
local MONITOR_WAIT = 60 -- seconds one blocking read of the monitor waits

local function check_args(key, opts, fname)
  args.check(key, "string", 1, fname)
  opts = args.opts(opts, 2, fname)
  if opts.timeout ~= nil and (type(opts.timeout) ~= "number" or opts.timeout < 0) then
    error(("bad option 'timeout' to '%s' (non-negative number expected)"):format(fname), 3)
  end
  return opts
end

local Lock = { __name = "coord.consul.lock" }
Lock.__index = Lock
Lock.wait_lost = session._wait_lost

-- Waits until l.session holds the key: blocking reads while another session holds it, a
-- pause while a lock-delay refuses it. Returns true or nil, err.
local function acquire(l, timeout)
  local kv = l.client.kv
  local deadline = timeout and core.now() + timeout
  local index, refused, tries = nil, false, 0
  while true do
    local left = session._left(deadline)
    if left <= 0 and tries > 0 then -- timeout = 0: one try
      return nil, errors.new("timeout", ("lock %s not acquired within %g s"):format(l.key, timeout))
    end
    tries = tries + 1
    local e, err, meta = kv:get(l.key, { index = index, wait = index and math.min(WAIT, left) })
    if err then return nil, err end
    if e and e.flags ~= M.FLAG then
      return nil, errors.new("conflict", "existing key " .. l.key .. " does not match lock use (flags differ)")
    end
    if e and e.session == l.session then return true end
    if e and e.session then
      index, refused = session._next_index(index, meta.index), false
    elseif refused then
      sched.sleep(math.min(RETRY, left))
      index, refused = nil, false
    else
      -- a caller canceled while the PUT is in flight gives back what it may have taken
      local ok, err = hold.shield(kv.put, function(took)
        if took then kv:put(l.key, l.value, { release = l.session, flags = M.FLAG }) end
      end, kv, l.key, l.value, { acquire = l.session, flags = M.FLAG })
      if ok then return true end
      if ok == nil then return nil, err end
      index, refused = nil, true -- another contender won, or a lock-delay: read again to know
    end
  end
end

-- One blocking read of the monitor: is the key still held by our session?
local function still_held(l)
  return function(index)
    local e, err, meta = l.client.kv:get(l.key, { index = index, wait = index and MONITOR_WAIT, consistent = true })
    if err then return nil, err end
    return e ~= nil and e.session == l.session, nil, meta
  end
end

--- Acquires the lock on key, waiting as long as it is held elsewhere. opts: value (stored
--- in the key), timeout (seconds to wait; default: forever), session (an existing session
--- ID to lock with, kept alive by the caller), ttl (of the lock's own session, default 15),
--- lock_delay, session_name, on_lost(err, lock), token, dc. Returns the held lock or nil, err
--- (kinds: "timeout", "conflict" when the key is not a lock key, or the request's error).
function M.lock(client, key, opts)
  opts = check_args(key, opts, "lock")
  local l = setmetatable({ client = client, key = key, value = opts.value or "", on_lost = opts.on_lost,
    what = "lock " .. key }, Lock)
  local ok, err = session._hold(client, l, opts, { name = "Consul API Lock" })
  if not ok then return nil, err end
  -- failed, timed out, canceled or closed before the lock is held: unlock (destroying our
  -- own session releases the key even if an acquire was applied unseen)
  local guard <close> = hold.guard(l.unlock, l)
  ok, err = acquire(l, opts.timeout)
  if not ok then return nil, err end
  guard:commit()
  l.monitor = sched.spawn(session._monitor, l, still_held(l))
  return l
end

-- The network part of unlock: release the key, delete it if free, destroy our session.
local function give_back(l)
  local ok, err = true, nil
  if not l.lost then
    local kv = l.client.kv
    ok, err = kv:put(l.key, l.value, { release = l.session, flags = M.FLAG })
    if ok then
      local e = kv:get(l.key)
      if e and not e.session and e.flags == M.FLAG then kv:delete(l.key, { cas = e.modify_index }) end
    end
  end
  local dok, derr = true, nil
  if l.keeper then dok, derr = l.keeper:close() end
  if ok == nil then return nil, err end
  if not dok then return nil, derr end
  return true
end

--- Releases the lock (and deletes its key unless another session took it meanwhile, as
--- `consul lock` does), then destroys the lock's own session. Works from any context (an
--- on_lost hook, <close>, a canceled or closed coroutine): where the caller cannot wait, the
--- requests run in a task of their own and unlock returns true at once. Returns true or
--- nil, err; unlocking again does nothing.
function Lock:unlock()
  if self.released then return true end
  self.released = true
  hold.stop(self.monitor)
  session._finish(self)
  return hold.cleanup(give_back, self)
end

function Lock:__close()
  self:unlock()
end

---------------------------------------------------------------------------------------------
-- leader election

local Election = { __name = "coord.consul.election" }
Election.__index = Election

--- An election on key: campaign() to become leader, leader() / observe() to learn who is,
--- resign() to step down. opts are the lock's options for campaign().
function M.election(client, key, opts)
  opts = check_args(key, opts, "election")
  return setmetatable({ client = client, key = key, opts = opts }, Election)
end

--- Waits until this process leads (holds the lock, with value as the key's value). opts:
--- timeout, on_lost. Returns the held lock or nil, err. Campaigning while leading raises.
function Election:campaign(value, opts)
  args.check(value, "string", 1, "campaign", true)
  opts = args.opts(opts, 2, "campaign")
  if self.lock and not self.lock.released then error("campaign: already leading (resign first)", 2) end
  local o = {}
  for k, v in pairs(self.opts) do o[k] = v end
  for k, v in pairs(opts) do o[k] = v end
  o.value = value
  local l, err = M.lock(self.client, self.key, o)
  self.lock = l
  return l, err
end

--- True while this process leads.
function Election:is_leader()
  return self.lock ~= nil and not self.lock.ended
end

--- Steps down (unlocks). Returns true or nil, err.
function Election:resign()
  local l = self.lock
  self.lock = nil
  if not l then return true end
  return l:unlock()
end

--- The current leader as { value, session }, nil and the meta; nil, nil, meta when there is
--- none; or nil, err. opts: index, wait (a blocking read), consistent, stale.
function Election:leader(opts)
  opts = args.opts(opts, 1, "leader")
  local e, err, meta = self.client.kv:get(self.key, opts)
  if err then return nil, err end
  if e and e.session then return { value = e.value, session = e.session }, nil, meta end
  return nil, nil, meta
end

--- Iterates over leader changes: `for leader, _, meta in election:observe() do`, where
--- leader is as from leader(), or false when there is none (a nil would end the loop). The
--- first step gives the current state; later steps come only when the leader's session or
--- value changed. Read errors are retried every second; break out of the loop to stop.
function Election:observe()
  local index, last
  return function()
    while true do
      local leader, err, meta = self:leader({ index = index, wait = index and MONITOR_WAIT })
      if err then
        index = nil
        sched.sleep(1)
      else
        index = session._next_index(index, meta.index)
        local key = leader and (leader.session .. "\0" .. (leader.value or "")) or ""
        if key ~= last then
          last = key
          return leader or false, nil, meta
        end
      end
    end
  end
end

args.methods(Lock)
args.methods(Election)

return M
