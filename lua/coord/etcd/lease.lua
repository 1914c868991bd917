-- coord.etcd.lease: leases (grant, revoke, time to live, list) and keepalives, including a
-- keeper that refreshes a lease on its own until stopped or lost.

local errors = require "coord.errors"
local hold = require "coord.hold"
local proto = require "coord.etcd.proto"
local args = require "coord.args"

local header_of, int = proto.header, proto.int

local Keeper = { __name = "coord.etcd.keeper" }
Keeper.__index = Keeper

--- Stops refreshing the lease (it is not revoked: it expires after its TTL). Safe from any
--- context: its own on_lost hook, a <close> scope, a canceled or closed coroutine.
function Keeper:stop()
  if not self.stopped then
    self.stopped = true
    self.renewal:stop()
  end
end
Keeper.__close = Keeper.stop

--- Waits until the keeper ends: nil and the "lost" error when the lease was lost, true
--- when it was stopped (also when its task was canceled).
function Keeper:wait()
  self.task:join()
  if self.err then return nil, self.err end
  return true
end

return function(Client, E)
  local check, option = args.check, args.option

  local function lease_error(j)
    if type(j.error) == "string" and j.error ~= "" then
      return errors.new("invalid", j.error)
    end
  end

  --- Grants a lease of ttl seconds. opts: id (ask for this lease ID). Returns
  --- `lease, nil, header`, lease = {id, ttl} (the server may grant a longer TTL).
  function Client:grant(ttl, opts)
    check(ttl, "integer", 1, "grant")
    opts = args.opts(opts, 2, "grant")
    option(opts, "id", "integer", "grant")
    local j, err = self:_post("/v3/lease/grant", { TTL = tostring(ttl), ID = opts.id and tostring(opts.id) })
    if not j then return nil, err end
    err = lease_error(j)
    if err then return nil, err end
    return { id = int(j.ID), ttl = int(j.TTL) }, nil, header_of(j.header)
  end

  --- Revokes a lease: every key attached to it is deleted. Returns `true, nil, header`; a
  --- lease that does not exist is a "not_found" error.
  function Client:revoke(id)
    check(id, "integer", 1, "revoke")
    local j, err = self:_post("/v3/lease/revoke", { ID = tostring(id) }, { idempotent = true })
    if not j then return nil, err end
    return true, nil, header_of(j.header)
  end

  --- The lease's remaining time: {id, ttl (-1 when the lease is gone), granted_ttl, keys
  --- (with opts.keys)}, nil, header.
  function Client:time_to_live(id, opts)
    check(id, "integer", 1, "time_to_live")
    opts = args.opts(opts, 2, "time_to_live")
    local j, err = self:_post("/v3/lease/timetolive", { ID = tostring(id), keys = opts.keys or nil },
      { idempotent = true })
    if not j then return nil, err end
    local info = { id = int(j.ID), ttl = int(j.TTL), granted_ttl = int(j.grantedTTL) }
    if opts.keys then
      local keys, strip = {}, #self.prefix
      for i, k in ipairs(j.keys or {}) do keys[i] = proto.bytes(k):sub(strip + 1) end
      info.keys = keys
    end
    return info, nil, header_of(j.header)
  end

  --- The IDs of all leases: `ids, nil, header`.
  function Client:leases()
    local j, err = self:_post("/v3/lease/leases", {}, { idempotent = true })
    if not j then return nil, err end
    local ids = {}
    for i, l in ipairs(j.leases or {}) do ids[i] = int(l.ID) end
    return ids, nil, header_of(j.header)
  end

  --- Refreshes a lease once. Returns its new TTL: `ttl, nil, header`; a lease the server no
  --- longer has is a "lost" error.
  function Client:keepalive_once(id)
    check(id, "integer", 1, "keepalive_once")
    local j, err = self:_post("/v3/lease/keepalive", { ID = tostring(id) }, { idempotent = true })
    if not j then return nil, err end
    if type(j.error) == "table" then return nil, E._stream_error(500, j, nil, "/v3/lease/keepalive") end
    local r = type(j.result) == "table" and j.result or {}
    local ttl = int(r.TTL)
    if ttl <= 0 then return nil, errors.new("lost", "lease " .. id .. " has expired or was revoked", { lease = id }) end
    return ttl, nil, header_of(r.header)
  end

  --- Keeps a lease alive from a task of its own (keeper.task), every TTL/3, until stopped
  --- (with keeper:stop(), <close>, or by canceling keeper.task) or lost. After a failed
  --- refresh it retries with a jittered backoff until a whole TTL has passed since the last
  --- success. opts: ttl (the lease's TTL if known), on_lost(err, keeper) called once when
  --- the lease is lost. Returns the keeper {id, ttl, err, task}.
  function Client:keepalive(id, opts)
    check(id, "integer", 1, "keepalive")
    opts = args.opts(opts, 2, "keepalive")
    option(opts, "ttl", "number", "keepalive")
    option(opts, "on_lost", "function", "keepalive")
    local k = setmetatable({ id = id, ttl = opts.ttl }, Keeper)
    local on_lost = opts.on_lost
    k.renewal = hold.renewal {
      ttl = opts.ttl, every = 3, first = 0, what = "lease " .. id, fields = { lease = id },
      renew = function()
        local ttl, err = self:keepalive_once(id)
        if ttl then k.ttl = ttl end
        return ttl, err
      end,
      lost = function(err)
        k.err = err
        if on_lost then on_lost(err, k) end
      end,
      -- over gRPC, the client's LeaseKeepAlive streams stay open while a keeper runs
      running = self.grpc and function(up) self.grpc._keepers(self, up and 1 or -1) end,
    }
    k.task = k.renewal.task
    return k
  end

  -- Runs a cleanup now, or in a task of its own where the caller cannot wait (see coord.hold).
  E._now_or_later = hold.cleanup
end
