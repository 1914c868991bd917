-- coord.etcd.lock: distributed locks on the gateway's lock service (v3lock), the same
-- recipe as `etcdctl lock`, each bound to a lease kept alive while the lock is held.

local proto = require "coord.etcd.proto"

local b64, bytes, header_of = proto.b64, proto.bytes, proto.header

local Lock = { __name = "coord.etcd.lock" }
Lock.__index = Lock

--- Releases the lock (same as etcd:unlock(lock)).
function Lock:unlock()
  return self.client:unlock(self)
end

return function(Client, E)
  local check = E._check

  function Lock:__close()
    if not self.released then E._now_or_later(self.client.unlock, self.client, self) end
  end

  --- Waits until the lock `name` is held and returns it: {name, key, lease, header}.
  --- opts: ttl (of the lease made for it, default 60 s), lease (use this lease instead; it is
  --- not kept alive nor revoked by coord), timeout (give up waiting after this many seconds:
  --- a "timeout" error; default: wait for ever), on_lost(err) (the lease was lost while held).
  function Client:lock(name, opts)
    check(name, "string", 1, "lock")
    opts = check(opts, "table", 2, "lock", true) or {}
    local lease, keeper = E._hold(self, opts)
    if not lease then return nil, keeper end
    local held = false
    -- canceled or failed while waiting: give the lease (and the queued key with it) back
    local guard <close> = setmetatable({}, { __close = function()
      if not held then E._now_or_later(E._drop, self, lease, keeper) end
    end })
    -- not re-sent after a broken connection: the first request's handler deletes our
    -- waiting key when it notices, racing with the second one
    local j, err = self:_post("/v3/lock/lock", { name = b64(self.prefix .. name), lease = tostring(lease) },
      { timeout = opts.timeout or 0 })
    if not j then return nil, err end
    held = true
    return setmetatable({
      client = self, name = name, key = bytes(j.key):sub(#self.prefix + 1), lease = lease,
      keeper = keeper, header = header_of(j.header), released = false,
    }, Lock)
  end

  --- Releases a lock taken with etcd:lock (and revokes the lease made for it). Returns the
  --- header (true when it was already released).
  function Client:unlock(lock)
    check(lock, "table", 1, "unlock")
    if getmetatable(lock) ~= Lock then error("bad argument #1 to 'unlock' (lock expected)", 2) end
    if lock.released then return true end
    lock.released = true
    local j, err = self:_post("/v3/lock/unlock", { key = b64(self.prefix .. lock.key) }, { idempotent = true })
    local ok, derr = E._drop(self, lock.lease, lock.keeper)
    if not j then return nil, err end
    if not ok then return nil, derr end
    return header_of(j.header)
  end
end
