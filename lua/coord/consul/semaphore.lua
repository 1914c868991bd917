-- coord.consul.semaphore: a semaphore on a KV prefix by the Go client's recipe
-- (api/semaphore.go), so coord and `consul lock -n N` share the same slots.

local core = require "coord.core"
local errors = require "coord.errors"
local session = require "coord.consul.session"
local hold = require "coord.hold"
local sched = require "coord.sched"
local args = require "coord.args"

local M = {}

--- The flag the Go client puts on semaphore keys (a uint64 above 2^63: a negative Lua integer).
M.FLAG = 0xe0f69a2baa414de0

local WAIT = 15         -- seconds one blocking read waits while all slots are taken
local MONITOR_WAIT = 60 -- seconds one blocking read of the monitor waits
local CAS_TRIES = 20    -- attempts to remove ourselves from the holders on release

local Semaphore = { __name = "coord.consul.semaphore" }
Semaphore.__index = Semaphore
Semaphore.wait_lost = session._wait_lost

--- A semaphore with `limit` slots on prefix (all contenders must agree on limit). opts:
--- value (stored in our contender key), timeout (seconds acquire waits; default forever),
--- session, ttl, lock_delay, session_name, on_lost(err, sem), token, dc, as for lock.
function M.new(client, prefix, limit, opts)
  args.check(prefix, "string", 1, "semaphore")
  if math.type(limit) ~= "integer" or limit < 1 then
    error("bad argument #2 to 'semaphore' (positive integer expected, got " .. tostring(limit) .. ")", 2)
  end
  opts = args.opts(opts, 3, "semaphore")
  prefix = prefix:gsub("/+$", "")
  return setmetatable({ client = client, prefix = prefix, limit = limit, opts = opts,
    lock_key = prefix .. "/.lock", what = "semaphore slot on " .. prefix }, Semaphore)
end

local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

-- Reads the prefix: the coordination key's entry (a stand-in when absent) and its decoded
-- {Limit, Holders}, with holders whose contender key is gone (dead session) pruned.
-- Returns state, nil, meta or nil, err.
local function read_state(s, o)
  local list, lerr, meta = s.client.kv:list(s.prefix .. "/", o)
  if not list then return nil, lerr end
  local entry, alive = { flags = M.FLAG, modify_index = 0 }, {}
  for _, e in ipairs(list) do
    if e.key == s.lock_key then entry = e end
    if e.session then alive[e.session] = true end
  end
  if entry.flags ~= M.FLAG then
    return nil, errors.new("conflict", "existing key " .. s.lock_key .. " does not match semaphore use (flags differ)")
  end
  local lock = { Limit = s.limit, Holders = {} }
  if entry.value and entry.value ~= "" then
    local err
    lock, err = core.json_decode(entry.value)
    if type(lock) ~= "table" then
      return nil, errors.new("protocol", "bad semaphore state in " .. s.lock_key .. ": " .. tostring(err))
    end
    if type(lock.Holders) ~= "table" then lock.Holders = {} end
  end
  if lock.Limit ~= s.limit then
    return nil, errors.new("conflict", ("semaphore limit conflict (lock: %s, local: %d)"):format(tostring(lock.Limit), s.limit))
  end
  for holder in pairs(lock.Holders) do
    if not alive[holder] then lock.Holders[holder] = nil end
  end
  return { entry = entry, lock = lock }, nil, meta
end

-- Writes the holders back if nobody changed the key since we read it.
local function swap(s, st)
  return s.client.kv:put(s.lock_key, core.json_encode(st.lock), { cas = st.entry.modify_index, flags = M.FLAG })
end

-- Waits for a free slot and takes it by adding our session to the holders (CAS).
local function take_slot(s, timeout)
  local deadline = timeout and core.now() + timeout
  local index, tries = nil, 0
  while true do
    local left = session._left(deadline)
    if left <= 0 and tries > 0 then -- timeout = 0: one try
      return nil, errors.new("timeout", ("no slot of %s free within %g s"):format(s.prefix, timeout))
    end
    tries = tries + 1
    local st, err, meta = read_state(s, { index = index, wait = index and math.min(WAIT, left) })
    if not st then return nil, err end
    local holders = st.lock.Holders
    if holders[s.session] then return true end
    if count(holders) < st.lock.Limit then
      holders[s.session] = true
      local ok, serr = swap(s, st)
      if ok then return true end
      if ok == nil then return nil, serr end
      index = nil -- lost a race with another contender: read again
    else
      index = session._next_index(index, meta.index)
    end
  end
end

local function still_holder(s)
  return function(index)
    local st, err, meta = read_state(s, { index = index, wait = index and MONITOR_WAIT, consistent = true })
    if not st then return nil, err end
    return st.lock.Holders[s.session] == true, nil, meta
  end
end

--- Waits for a slot and takes it. opts: timeout (overrides the semaphore's). Returns the
--- semaphore (held: use :release() or <close>) or nil, err (kinds: "timeout", "conflict"
--- for other flags or another limit, or the request's error). Acquiring twice raises. A
--- failure, timeout, cancel or close before the slot is held gives everything back.
function Semaphore:acquire(opts)
  opts = args.opts(opts, 1, "acquire")
  if self.held then error("acquire: semaphore slot already held (release first)", 2) end
  local timeout = args.option(opts, "timeout", "number", "acquire") or self.opts.timeout
  self.lost, self.ended, self.monitor, self.keeper = nil, nil, nil, nil
  self.on_lost = self.opts.on_lost
  local ok, err = session._hold(self.client, self, self.opts, { name = "Consul API Semaphore", behavior = "delete" })
  if not ok then return nil, err end
  self.held = true
  self.contender = self.prefix .. "/" .. self.session
  local guard <close> = hold.guard(self.release, self)
  local kv = self.client.kv
  local contender = self.contender
  ok, err = hold.shield(kv.put, function(took) if took then kv:delete(contender) end end,
    kv, contender, self.opts.value or "", { acquire = self.session, flags = M.FLAG })
  if ok == false then err = errors.new("conflict", "could not take contender key " .. self.contender) end
  if ok then ok, err = take_slot(self, timeout) end
  if not ok then return nil, err end
  guard:commit()
  self.monitor = sched.spawn(session._monitor, self, still_holder(self))
  return self
end

-- The network part of release: remove `slot.session` from the holders (CAS, retried),
-- delete its contender key, destroy its own session.
local function give_back(s, slot)
  local ok, err = true, nil
  for _ = 1, CAS_TRIES do
    local st, rerr = read_state(s)
    if not st then ok, err = nil, rerr break end
    if not st.lock.Holders[slot.session] then break end
    st.lock.Holders[slot.session] = nil
    local done, perr = swap(s, st)
    if done then break end
    if done == nil then ok, err = nil, perr break end
  end
  local dok, derr = s.client.kv:delete(slot.contender)
  if ok and not dok then ok, err = nil, derr end
  if slot.keeper then
    local sok, serr = slot.keeper:close()
    if ok and not sok then ok, err = nil, serr end
  end
  if not ok then return nil, err end
  return true
end

--- Gives the slot back: removes our session from the holders (CAS, retried), deletes our
--- contender key and destroys our own session. Works from any context, as lock:unlock().
--- Returns true or nil, err; releasing a semaphore not held does nothing.
function Semaphore:release()
  if not self.held then return true end
  self.held = false
  hold.stop(self.monitor)
  session._finish(self)
  return hold.cleanup(give_back, self, { session = self.session, contender = self.contender, keeper = self.keeper })
end

function Semaphore:__close()
  self:release()
end

args.methods(Semaphore)

return M
