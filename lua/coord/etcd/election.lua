-- coord.etcd.election: leader elections on the gateway's election service (v3election), the
-- same recipe as `etcdctl elect`: campaign, proclaim, leader, observe, resign.

local core = require "coord.core"
local http = require "coord.http"
local errors = require "coord.errors"
local proto = require "coord.etcd.proto"

local b64, bytes, header_of, int = proto.b64, proto.bytes, proto.header, proto.int

local Leadership = { __name = "coord.etcd.leadership" }
Leadership.__index = Leadership

local Observer = { __name = "coord.etcd.observer" }
Observer.__index = Observer

--- The next leader (a kv: its key and proclaimed value), waiting for a change; nil, err when
--- the stream fails or was closed.
function Observer:next()
  while true do
    local line, err = self.stream:read_line()
    if not line then
      err = err or errors.new("closed", "election observe stream ended")
      self.error = err
      return nil, err
    end
    local j = core.json_decode(line)
    local r = type(j) == "table" and j.result
    if type(r) == "table" and r.kv then return proto.kv(r.kv, self.strip), header_of(r.header) end
    if type(j) == "table" and (j.error ~= nil or j.code ~= nil) then
      -- a refused call ({error, code, message}) or an error inside the stream ({error = {...}})
      local e = type(j.error) == "table" and j.error or j
      err = self.server_error({ status = math.tointeger(e.http_code) or self.stream.status or 500, body = "" },
        { message = e.message or e.error, code = e.grpc_code or e.code }, "/v3/election/observe")
      self.error = err
      return nil, err
    end
  end
end

--- Iterates over leaders as they change; a failure ends the loop and is left in
--- observer.error.
function Observer:leaders()
  return function() return (self:next()) end
end

--- Stops observing.
function Observer:close()
  self.stream:close()
end
Observer.__close = Observer.close

return function(Client, E)
  local check = E._check

  local function leader_json(self, l)
    if getmetatable(l) ~= Leadership then error("bad argument #1 (leadership from campaign expected)", 3) end
    return { name = b64(self.prefix .. l.name), key = b64(self.prefix .. l.key), rev = tostring(l.rev),
      lease = tostring(l.lease) }
  end

  --- Waits until this client is the leader of election `name`, proclaiming `value`, and
  --- returns the leadership {name, key, rev, lease, header}. opts: as etcd:lock (ttl, lease,
  --- timeout, on_lost).
  function Client:campaign(name, value, opts)
    check(name, "string", 1, "campaign")
    check(value, "string", 2, "campaign")
    opts = check(opts, "table", 3, "campaign", true) or {}
    local lease, keeper = E._hold(self, opts)
    if not lease then return nil, keeper end
    local won = false
    local guard <close> = setmetatable({}, { __close = function()
      if not won then E._now_or_later(E._drop, self, lease, keeper) end
    end })
    local j, err = self:_post("/v3/election/campaign",
      { name = b64(self.prefix .. name), lease = tostring(lease), value = b64(value) },
      { timeout = opts.timeout or 0 })
    if not j then return nil, err end
    won = true
    local l = j.leader or {}
    return setmetatable({
      client = self, name = name, key = bytes(l.key):sub(#self.prefix + 1), rev = int(l.rev),
      lease = int(l.lease), keeper = keeper, header = header_of(j.header), resigned = false,
    }, Leadership)
  end

  --- Announces a new value as the leader without a new election. Returns the header; a
  --- leadership that was lost is a "not_found" error.
  function Client:proclaim(leadership, value)
    check(leadership, "table", 1, "proclaim")
    check(value, "string", 2, "proclaim")
    local j, err = self:_post("/v3/election/proclaim", { leader = leader_json(self, leadership), value = b64(value) },
      { idempotent = true })
    if not j then return nil, err end
    return header_of(j.header)
  end

  --- The current leader of election `name` as a kv (key and proclaimed value), or nil when
  --- there is none; header.
  function Client:leader(name)
    check(name, "string", 1, "leader")
    local j, err = self:_post("/v3/election/leader", { name = b64(self.prefix .. name) }, { idempotent = true })
    if not j then
      if err.message:find("no leader", 1, true) then return nil end
      return nil, err
    end
    return j.kv and proto.kv(j.kv, #self.prefix) or nil, header_of(j.header)
  end

  --- Follows the leaders of election `name`: returns an observer with :next(), :leaders()
  --- (an iterator) and :close() (also <close>). The current leader comes first.
  function Client:observe(name)
    check(name, "string", 1, "observe")
    local t, err = self:_target()
    if not t then return nil, err end
    local s = http.stream {
      url = t.url .. "/v3/election/observe", method = "POST", headers = t.headers, tls = t.tls,
      http_version = t.http_version, pipewait = t.pipewait, timeout = 0,
      body = core.json_encode { name = b64(self.prefix .. name) },
    }
    return setmetatable({ stream = s, strip = #self.prefix, server_error = E._server_error }, Observer)
  end

  --- Gives up the leadership (and revokes the lease made for it). Returns the header (true
  --- when already resigned).
  function Client:resign(leadership)
    check(leadership, "table", 1, "resign")
    local body = { leader = leader_json(self, leadership) }
    if leadership.resigned then return true end
    leadership.resigned = true
    local j, err = self:_post("/v3/election/resign", body, { idempotent = true })
    local ok, derr = E._drop(self, leadership.lease, leadership.keeper)
    if not j then return nil, err end
    if not ok then return nil, derr end
    return header_of(j.header)
  end

  --- Resigns (same as etcd:resign(leadership)).
  function Leadership:resign()
    return self.client:resign(self)
  end

  function Leadership:__close()
    if not self.resigned then E._now_or_later(self.client.resign, self.client, self) end
  end
end
