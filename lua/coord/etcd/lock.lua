-- coord.etcd.lock: distributed locks on the client-side recipe of `etcdctl lock` (Go's
-- concurrency.Mutex), and the contender machinery elections share (coord/etcd/election.lua).

local core = require "coord.core"
local sched = require "coord.sched"
local errors = require "coord.errors"
local hold_mod = require "coord.hold"
local retry, shield = hold_mod.retry, hold_mod.shield
local args = require "coord.args"

local Lock = { __name = "coord.etcd.lock" }
Lock.__index = Lock

--- Releases the lock (same as etcd:unlock(lock)).
function Lock:unlock()
  return self.client:unlock(self)
end

-- Failures after which a write may have been applied: the transport says so when it knows
-- (err.maybe_applied), else the kinds that leave it open (a broken or timed out exchange, a
-- 503 or 5xx answer, a garbled reply).
local uncertain_kinds = { timeout = true, closed = true, unavailable = true, protocol = true }

local function uncertain(err)
  if err.maybe_applied ~= nil then return err.maybe_applied end
  return uncertain_kinds[err.kind] == true or (err.kind == "http" and (err.status or 500) >= 500)
end

-- How often the lease grant and the create-if-absent txn are sent when every try ends
-- uncertain and the re-read finds nothing: each re-send is of a write proved unapplied (a
-- late apply of an earlier one only makes the next fail as "exists", which is then ours).
local CREATE_TRIES = 3

-- A lease ID of our own choosing: known before the grant is sent, so that a grant canceled
-- or failed in flight can still be revoked or looked up. Random, with the clock mixed in so
-- that programs seeding math.random alike still pick apart.
local function new_lease_id()
  local id = (math.random(0, math.maxinteger) ~ math.floor(core.now() * 1e6)) & math.maxinteger
  return id ~= 0 and id or 1
end

local function lease_exists(err)
  return err.code == 9 and tostring(err.message):find("lease already exists", 1, true) ~= nil
end

return function(Client, E)
  local check, option = args.check, args.option
  E._uncertain = uncertain

  local function lost_error(c, why)
    return errors.new("lost", ("%s %s: %s"):format(c.what, c.name, why), { key = c.key, lease = c.lease })
  end

  -- Gives a contender's place back: revokes the lease made for it (which deletes its key),
  -- or deletes its key from the caller's lease. A lost lease is not an error. Never stops
  -- the keeper from inside the keeper itself (on_lost runs there, and it is ending anyway).
  -- The keeper is stopped first, whatever follows; a revoke that fails (every endpoint
  -- failing through a leader election) is returned, and retried in the background for one
  -- TTL so that the next contender need not wait for the lease to expire. Returns
  -- `true, nil, header` (no header when the lease was gone already), or nil, err.
  -- Revokes lease (of ttl seconds); a revoke that fails is retried in the background for one TTL.
  local function revoke(self, lease, ttl)
    local ok, err, h = self:revoke(lease)
    if ok then return true, nil, h end
    if err.kind == "not_found" then return true end
    retry(function()
      local rok, rerr = self:revoke(lease)
      return rok or rerr.kind == "not_found"
    end, ttl)
    return nil, err
  end

  local function release(self, c)
    if c.own then
      if c.keeper and not c.lost then c.keeper:stop() end
      return revoke(self, c.lease, c.lease_ttl)
    end
    local n, err, h = self:delete(c.key)
    if not n then return nil, err end
    return true, nil, h
  end
  E._release = release

  -- Creates c.key (bound to c.lease) if it is absent, reading the first contender in the same
  -- txn. Returns the key's create revision and, when known, the first contender's kv (false:
  -- none) and the header; or nil, err. After an uncertain failure it reads the key instead of
  -- sending the write again: present with our lease, it is ours.
  local function enter(self, c, value)
    local first = { get = c.prefix, prefix = true, sort_target = "create", sort_order = "ascend", limit = 1 }
    local spec = {
      compare = { { key = c.key, create_revision = 0 } },
      success = { { put = c.key, value = value, lease = c.lease }, first },
      failure = { { get = c.key }, first },
    }
    for _ = 1, CREATE_TRIES do
      local r, err, h = self:txn(spec)
      if r then
        local owner = r.responses[2][1] or false
        if r.succeeded then return h.revision, owner, h, value end
        local kv = r.responses[1][1]
        if not kv then return nil, errors.new("protocol", "txn on " .. c.key .. " read no key") end
        return kv.create_revision, owner, h, kv.value
      end
      if not uncertain(err) then return nil, err end
      local kv, gerr, gh = self:get(c.key)
      if gerr then return nil, gerr end
      if kv then
        if kv.lease ~= c.lease then
          return nil, errors.new("conflict", c.key .. " exists with another lease", { key = c.key })
        end
        return kv.create_revision, nil, gh, kv.value
      end
    end
    return nil, errors.new("unavailable", "could not create " .. c.key .. " after " .. CREATE_TRIES .. " tries")
  end

  -- The answer of a try (timeout = 0) that found another contender first.
  local function busy(c)
    return nil, errors.new("timeout", ("%s %s is held by another contender"):format(c.what, c.name))
  end

  -- Waits until the key just before c's (the newest one created before it) is deleted, again
  -- until none is left; then checks that c's key still exists and returns that read's header.
  local function wait_turn(self, c)
    while true do
      if c.lost then return nil, c.lost end
      local pred, perr, h = self:range(c.prefix, { prefix = true, max_create_revision = c.rev - 1,
        sort_target = "create", sort_order = "descend", limit = 1 })
      if not pred then return nil, perr end
      if #pred == 0 then break end
      if c.try then return busy(c) end
      local w <close> = self:watch(pred[1].key, { start_revision = h.revision + 1 })
      c.watch = w
      repeat
        local ev, err = w:next()
        if c.lost then return nil, c.lost end
        -- compacted since the read: read again (the predecessor may be gone already)
        if not ev and err.kind ~= "compacted" then return nil, err end
      until not ev or ev.type == "delete"
      c.watch = nil
    end
    if c.lost then return nil, c.lost end
    local kv, err, h = self:get(c.key)
    if err then return nil, err end
    if not kv then return nil, lost_error(c, "its key is gone (lease expired or revoked)") end
    return h
  end

  -- Enters c and waits for its turn. Returns the header, or nil, err.
  local function acquire(self, c, value)
    local rev, first, h, found = enter(self, c, value)
    if not rev then return nil, first end
    c.rev, c.found = rev, found
    if first == false or (first and first.create_revision == rev) then return h end
    if first and c.try then return busy(c) end
    return wait_turn(self, c)
  end

  -- Gives c its lease: the caller's (opts.lease, left alone), or a new one of opts.ttl seconds
  -- (default 60, as etcdctl) with an ID chosen here, kept alive until released. The keeper's
  -- loss ends a waiting attempt and tells a holder (c.lost, opts.on_lost). Returns true or
  -- nil, err.
  local function hold(self, c, opts)
    local ttl = opts.ttl or 60
    if opts.lease then
      c.lease = opts.lease
      return true
    end
    c.own, c.lease_ttl = true, ttl
    local granted, maybe
    for _ = 1, CREATE_TRIES do
      c.lease = c.lease or new_lease_id()
      -- a grant canceled in flight may still be applied after the contender's release has
      -- revoked nothing: it runs to its end, and a grant that was (or may have been) applied
      -- is then revoked
      local lease = c.lease
      local g, err = shield(function() return self:grant(ttl, { id = lease }) end, function(gr, gerr)
        if gr or uncertain(gerr) then revoke(self, lease, ttl) end
      end)
      if g then
        granted = g.ttl
      elseif lease_exists(err) and maybe then
        granted = ttl -- an earlier, uncertain grant was applied after all
      elseif lease_exists(err) then
        c.lease = nil -- someone else's ID: pick another
      elseif uncertain(err) then
        local info, ierr = self:time_to_live(c.lease)
        if not info then return nil, ierr end
        if info.ttl > 0 then granted = info.granted_ttl end
        maybe = true
      else
        return nil, err
      end
      if granted then break end
    end
    if not granted then return nil, errors.new("unavailable", "could not grant a lease after " .. CREATE_TRIES .. " tries") end
    c.lease_ttl = granted
    local user_lost = opts.on_lost
    c.keeper = self:keepalive(c.lease, { ttl = granted, on_lost = function(err)
      c.lost = err
      if c.watch then c.watch:close() end
      if c.held and user_lost then user_lost(err, c) end
    end })
    return true
  end

  -- Gets c its lease, then its turn: the header of the read that saw it first, or nil, err.
  local function hold_and_acquire(self, c, opts, value)
    local ok, err = hold(self, c, opts)
    if not ok then return nil, err end
    c.key = ("%s/%x"):format(c.name, c.lease)
    return acquire(self, c, value)
  end

  --- Checks the options of a lock or a campaign (fname) where the caller gives them.
  function E._contend_opts(opts, fname)
    option(opts, "on_lost", "function", fname)
    option(opts, "ttl", "integer", fname)
    option(opts, "lease", "integer", fname)
    local timeout = option(opts, "timeout", "number", fname)
    if timeout and not (timeout >= 0) then
      error(("bad option 'timeout' to '%s' (non-negative number expected, got %s)"):format(fname, tostring(timeout)), 3)
    end
  end

  --- Takes a place among the contenders of `name` (lock or election, `what`, for messages),
  --- with `value` in its key, and waits for its turn. opts (checked with E._contend_opts):
  --- ttl, lease, timeout (0: try once; above 0: a cap on the whole call, the lease grant,
  --- every retry and re-authentication included), on_lost(err, c). Returns the contender (its
  --- own table, made a lock or leadership by the caller) or nil, err; canceled or failed, it
  --- leaves no key and no lease behind.
  function E._contend(self, what, name, value, opts)
    local timeout = opts.timeout
    local c = { client = self, what = what, name = name, prefix = name .. "/", try = timeout == 0 }
    local capped -- the time limit ran out: give back in the background, not past the limit
    local guard <close> = setmetatable({}, { __close = function()
      if c.held or not c.lease then return end
      if capped then
        sched.spawn(release, self, c)
      else
        E._now_or_later(release, self, c)
      end
    end })
    local h, err
    if timeout and timeout > 0 then
      h, err = sched.timeout(timeout, hold_and_acquire, self, c, opts, value)
      capped = not h
    else
      h, err = hold_and_acquire(self, c, opts, value)
    end
    if h and c.lost then h, err = nil, c.lost end -- lost while its txn was in flight
    if not h then return nil, err end
    c.held, c.header, c.watch, c.try = true, h, nil, nil
    return c
  end

  function Lock:__close()
    if not self.released then E._now_or_later(self.client.unlock, self.client, self) end
  end

  --- Waits until the lock `name` is held and returns it: `lock, nil, header`, lock = {name,
  --- key, rev, lease, keeper, header, lost}. opts: ttl (of the lease made for it, default
  --- 60 s), lease (use this lease instead; not kept alive nor revoked by coord), timeout
  --- (seconds for the whole call, the lease grant and every retry and re-authentication
  --- included, then a "timeout" error; 0: try once; default: wait for ever), on_lost(err,
  --- lock) (the lease was lost while held).
  function Client:lock(name, opts)
    check(name, "string", 1, "lock")
    opts = args.opts(opts, 2, "lock")
    E._contend_opts(opts, "lock")
    local c, err = E._contend(self, "lock", name, "", opts)
    if not c then return nil, err end
    c.released = false
    return setmetatable(c, Lock), nil, c.header
  end

  --- Releases a lock taken with etcd:lock: revokes the lease made for it (or deletes its key
  --- from the caller's lease). Returns `true, nil, header` (no header when it was already
  --- released or its lease was gone), or nil, err.
  function Client:unlock(lock)
    check(lock, "table", 1, "unlock")
    if getmetatable(lock) ~= Lock then error("bad argument #1 to 'unlock' (lock expected)", 2) end
    if lock.released then return true end
    lock.released = true
    return E._now_or_later(release, self, lock)
  end
end
