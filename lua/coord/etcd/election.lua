-- coord.etcd.election: leader elections on the client-side recipe of `etcdctl elect` (Go's
-- concurrency.Election): campaign, proclaim, leader, observe, resign. The contenders are
-- the ones locks use (coord/etcd/lock.lua), with the proclaimed value in the key.

local errors = require "coord.errors"
local hold = require "coord.hold"
local proto = require "coord.etcd.proto"
local args = require "coord.args"
local sched = require "coord.sched"
local now = require("coord.core").now

local Leadership = { __name = "coord.etcd.leadership" }
Leadership.__index = Leadership

local Observer = { __name = "coord.etcd.observer" }
Observer.__index = Observer

-- The contender with the lowest create revision among o.kvs, or nil.
local function first_of(o)
  local best
  for _, kv in pairs(o.kvs) do
    if not best or kv.create_revision < best.create_revision then best = kv end
  end
  return best
end

--- The next leader, waiting for a change: `kv, nil, header` (kv: its key and proclaimed
--- value; the header's revision is the one it was seen at); nil, err when the watch fails or
--- was closed.
function Observer:next()
  while true do
    if self.error then return nil, self.error end
    local kv = first_of(self)
    local last = self.last
    if kv and (not last or last.key ~= kv.key or last.mod_revision ~= kv.mod_revision) then
      self.last = kv
      local h = proto.header(nil)
      h.revision = math.max(self.revision, kv.mod_revision)
      return kv, nil, h
    end
    local w = self.watch
    repeat -- every event of a revision before looking again: a txn is seen whole
      local ev, err = w:next()
      if not ev then
        self.error = err
        return nil, err
      end
      self.kvs[ev.kv.key] = ev.type == "put" and ev.kv or nil
      self.revision = ev.kv.mod_revision
    until #w == 0
  end
end

--- Iterates over leaders as they change: `for kv, _, header in observer:leaders()`. A
--- failure ends the loop and is left in observer.error. The observer stays open when the
--- loop is left (close it, or hold it in a <close> variable).
function Observer:leaders()
  return function() return self:next() end
end

--- An observer is its own iterator: `for kv in obs do ... end` reads obs:next().
function Observer:__call()
  return self:next()
end

--- Stops observing.
function Observer:close()
  self.watch:close()
end
Observer.__close = Observer.close

return function(Client, E)
  local check = args.check

  local function leadership_arg(l, fname)
    if getmetatable(l) ~= Leadership then
      error("bad argument #1 to '" .. fname .. "' (leadership from campaign expected)", 3)
    end
  end

  local function not_leader(l)
    return errors.new("not_found", ("leadership of election %s is lost"):format(l.name), { key = l.key })
  end

  -- Puts value in the leader's key while it is still the one of this leadership (same create
  -- revision). After an uncertain failure, reads the key rather than writing again.
  local function put_value(self, l, value)
    local r, err, h = self:txn {
      compare = { { key = l.key, create_revision = l.rev } },
      success = { { put = l.key, value = value, lease = l.lease } },
    }
    if r then
      if not r.succeeded then return nil, not_leader(l) end
      return h
    end
    if not E._uncertain(err) then return nil, err end
    local kv, gerr, gh = self:get(l.key)
    if gerr then return nil, err end
    if not kv or kv.create_revision ~= l.rev then return nil, not_leader(l) end
    if kv.value == value then return gh end
    return nil, err
  end

  --- Waits until this client is the leader of election `name`, proclaiming `value`, and
  --- returns the leadership: `leadership, nil, header`, leadership = {name, key, rev, lease,
  --- keeper, header, lost}. opts: as etcd:lock (ttl, lease, timeout: a cap on the whole call,
  --- on_lost).
  function Client:campaign(name, value, opts)
    check(name, "string", 1, "campaign")
    check(value, "string", 2, "campaign")
    opts = args.opts(opts, 3, "campaign")
    E._contend_opts(opts, "campaign")
    local started = now()
    local c, err = E._contend(self, "election", name, value, opts)
    if not c then return nil, err end
    c.resigned = false
    setmetatable(c, Leadership)
    if c.found ~= value then -- the key was there already (the caller's lease) with another value
      -- failed, canceled or timed out from outside while proclaiming: resign
      local guard <close> = hold.guard(self.resign, self, c)
      local h, perr
      if opts.timeout and opts.timeout > 0 then -- what is left of the call's cap
        h, perr = sched.timeout(math.max(0, opts.timeout - (now() - started)), put_value, self, c, value)
      else
        h, perr = put_value(self, c, value)
      end
      if not h then return nil, perr end
      guard:commit()
      c.header = h
    end
    c.found = nil
    return c, nil, c.header
  end

  --- Announces a new value as the leader without a new election. Returns `true, nil,
  --- header`; a leadership that was lost is a "not_found" error.
  function Client:proclaim(leadership, value)
    check(leadership, "table", 1, "proclaim")
    check(value, "string", 2, "proclaim")
    leadership_arg(leadership, "proclaim")
    local h, err = put_value(self, leadership, value)
    if not h then return nil, err end
    return true, nil, h
  end

  --- The current leader of election `name`: `kv, nil, header` (kv: its key and proclaimed
  --- value); `nil, nil, header` when there is none.
  function Client:leader(name)
    check(name, "string", 1, "leader")
    local kvs, err, h = self:range(name .. "/", { prefix = true, sort_target = "create", sort_order = "ascend", limit = 1 })
    if not kvs then return nil, err end
    return kvs[1], nil, h
  end

  --- Follows the leaders of election `name`: returns an observer with :next(), :leaders()
  --- (an iterator) and :close() (also <close>): `observer, nil, header, observer`, the 4th
  --- the closing value of a generic for (`for kv in etcd:observe(name)` closes it when the
  --- loop is left). The current leader comes first.
  function Client:observe(name)
    check(name, "string", 1, "observe")
    local prefix = name .. "/"
    local all, err, h = self:range(prefix, { prefix = true })
    if not all then return nil, err end
    local kvs = {}
    for _, kv in ipairs(all) do kvs[kv.key] = kv end
    local obs = setmetatable({
      kvs = kvs, revision = h.revision,
      watch = self:watch(prefix, { prefix = true, start_revision = h.revision + 1 }),
    }, Observer)
    return obs, nil, h, obs
  end

  --- Gives up the leadership: revokes the lease made for it (or deletes its key from the
  --- caller's lease). Returns `true, nil, header` (no header when already resigned or its
  --- lease was gone), or nil, err.
  function Client:resign(leadership)
    check(leadership, "table", 1, "resign")
    leadership_arg(leadership, "resign")
    if leadership.resigned then return true end
    leadership.resigned = true
    return E._now_or_later(E._release, self, leadership)
  end

  --- Resigns (same as etcd:resign(leadership)).
  function Leadership:resign()
    return self.client:resign(self)
  end

  function Leadership:__close()
    if not self.resigned then E._now_or_later(self.client.resign, self.client, self) end
  end
end
