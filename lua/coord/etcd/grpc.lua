-- coord.etcd.grpc: the etcd client's unary calls over etcd's native gRPC (transport = "grpc").
-- One request body in the gateway's JSON shape goes out as its protobuf message, and the reply
-- comes back in the gateway's JSON shape, so everything above the transport stays as it is.

local core = require "coord.core"
local grpc = require "coord.grpc"
local errors = require "coord.errors"
local schema = require "coord.etcd.pb_schema"
local codes = require "coord.etcd.grpc_codes"

local M = {}

local pb_encode, pb_decode, json_decode = core.pb_encode, core.pb_decode, core.json_decode
local b64encode, b64decode, i64, u64 = core.b64encode, core.b64decode, core.i64, core.u64
local types, messages, enums = schema.types, schema.messages, schema.enums

-- Each gateway path coord sends a unary call to, as its gRPC method and messages. The streams
-- are below: lease keepalive (`exchanges`), snapshot (`snapshot`) and watch (`watch_wire`).
-- The gateway's
-- /v3/maintenance/transfer-leadership is the method MoveLeader.
local calls = {
  ["/v3/kv/range"] = { "/etcdserverpb.KV/Range", "RangeRequest", "RangeResponse" },
  ["/v3/kv/put"] = { "/etcdserverpb.KV/Put", "PutRequest", "PutResponse" },
  ["/v3/kv/deleterange"] = { "/etcdserverpb.KV/DeleteRange", "DeleteRangeRequest", "DeleteRangeResponse" },
  ["/v3/kv/txn"] = { "/etcdserverpb.KV/Txn", "TxnRequest", "TxnResponse" },
  ["/v3/kv/compaction"] = { "/etcdserverpb.KV/Compact", "CompactionRequest", "CompactionResponse" },
  ["/v3/lease/grant"] = { "/etcdserverpb.Lease/LeaseGrant", "LeaseGrantRequest", "LeaseGrantResponse" },
  ["/v3/lease/revoke"] = { "/etcdserverpb.Lease/LeaseRevoke", "LeaseRevokeRequest", "LeaseRevokeResponse" },
  ["/v3/lease/timetolive"] = { "/etcdserverpb.Lease/LeaseTimeToLive", "LeaseTimeToLiveRequest",
    "LeaseTimeToLiveResponse" },
  ["/v3/lease/leases"] = { "/etcdserverpb.Lease/LeaseLeases", "LeaseLeasesRequest", "LeaseLeasesResponse" },
  ["/v3/auth/authenticate"] = { "/etcdserverpb.Auth/Authenticate", "AuthenticateRequest", "AuthenticateResponse" },
  ["/v3/cluster/member/list"] = { "/etcdserverpb.Cluster/MemberList", "MemberListRequest", "MemberListResponse" },
  ["/v3/maintenance/status"] = { "/etcdserverpb.Maintenance/Status", "StatusRequest", "StatusResponse" },
  ["/v3/cluster/member/add"] = { "/etcdserverpb.Cluster/MemberAdd", "MemberAddRequest", "MemberAddResponse" },
  ["/v3/cluster/member/remove"] = { "/etcdserverpb.Cluster/MemberRemove", "MemberRemoveRequest", "MemberRemoveResponse" },
  ["/v3/cluster/member/update"] = { "/etcdserverpb.Cluster/MemberUpdate", "MemberUpdateRequest", "MemberUpdateResponse" },
  ["/v3/cluster/member/promote"] = { "/etcdserverpb.Cluster/MemberPromote", "MemberPromoteRequest",
    "MemberPromoteResponse" },
  ["/v3/maintenance/alarm"] = { "/etcdserverpb.Maintenance/Alarm", "AlarmRequest", "AlarmResponse" },
  ["/v3/maintenance/defragment"] = { "/etcdserverpb.Maintenance/Defragment", "DefragmentRequest", "DefragmentResponse" },
  ["/v3/maintenance/hashkv"] = { "/etcdserverpb.Maintenance/HashKV", "HashKVRequest", "HashKVResponse" },
  ["/v3/maintenance/transfer-leadership"] = { "/etcdserverpb.Maintenance/MoveLeader", "MoveLeaderRequest",
    "MoveLeaderResponse" },
}

-- The Auth service's calls by gateway path, as methods; the messages of method M are
-- AuthMRequest and AuthMResponse (AuthEnableRequest for AuthEnable).
for path, method in pairs {
  enable = "AuthEnable", disable = "AuthDisable", ["user/add"] = "UserAdd", ["user/get"] = "UserGet",
  ["user/list"] = "UserList", ["user/delete"] = "UserDelete", ["user/changepw"] = "UserChangePassword",
  ["user/grant"] = "UserGrantRole", ["user/revoke"] = "UserRevokeRole", ["role/add"] = "RoleAdd",
  ["role/get"] = "RoleGet", ["role/list"] = "RoleList", ["role/delete"] = "RoleDelete",
  ["role/grant"] = "RoleGrantPermission", ["role/revoke"] = "RoleRevokePermission",
} do
  local m = method:find("^Auth") and method or "Auth" .. method
  calls["/v3/auth/" .. path] = { "/etcdserverpb.Auth/" .. method, m .. "Request", m .. "Response" }
end
M.calls = calls

-- The enum of each enum field the mapped messages carry (the gateway spells enums by name).
local enum_of = {
  ["RangeRequest.sort_order"] = "RangeRequest.SortOrder",
  ["RangeRequest.sort_target"] = "RangeRequest.SortTarget",
  ["Compare.result"] = "Compare.CompareResult",
  ["Compare.target"] = "Compare.CompareTarget",
  ["Permission.permType"] = "Permission.Type",
  ["AlarmRequest.action"] = "AlarmRequest.AlarmAction",
  ["AlarmRequest.alarm"] = "AlarmType",
  ["AlarmMember.alarm"] = "AlarmType",
  ["Event.type"] = "Event.EventType",
  ["WatchCreateRequest.filters"] = "WatchCreateRequest.FilterType",
}

-- Per message, field name -> { type, repeated, enum names -> numbers, numbers -> names }.
local fields = {}
for name, defs in pairs(messages) do
  local f = {}
  for _, d in ipairs(defs) do
    local e = enum_of[name .. "." .. d[2]]
    local by_name = e and enums[e]
    local by_number
    if by_name then
      by_number = {}
      for k, v in pairs(by_name) do by_number[v] = k end
    end
    f[d[2]] = { type = d[3], repeated = d[4] == "repeated", by_name = by_name, by_number = by_number }
  end
  fields[name] = f
end

local INT = { int64 = i64, sint64 = i64, sfixed64 = i64, int32 = i64, sint32 = i64, sfixed32 = i64, uint32 = i64,
  fixed32 = i64, uint64 = u64, fixed64 = u64 }

-- One gateway JSON value as the codec wants it: base64 -> bytes, int64 strings -> integers,
-- enum names -> numbers, nested messages likewise. nil for a value that cannot be read.
local to_pb
local function pb_value(f, v)
  local t = f.type
  if t == "bytes" then return type(v) == "string" and b64decode(v) or nil end
  local int = INT[t]
  if int then
    if type(v) == "string" then return int(v) end
    return math.tointeger(v)
  end
  if t == "enum" then
    if type(v) == "string" then return f.by_name and f.by_name[v] end
    return math.tointeger(v)
  end
  if fields[t] then return type(v) == "table" and to_pb(t, v) or nil end
  return v
end

function to_pb(name, j)
  local fs, out = fields[name], {}
  for k, v in pairs(j) do
    local f = fs[k]
    if f then
      if f.repeated then
        local list = {}
        for i, x in ipairs(v) do list[i] = pb_value(f, x) end
        out[k] = list
      else
        out[k] = pb_value(f, v)
      end
    end
  end
  return out
end
M._to_pb = to_pb

-- A decoded reply in the gateway's shape: bytes as base64, enums by name. Integers stay
-- integers (coord.etcd.proto reads both).
local from_pb
local function json_value(f, v)
  local t = f.type
  if t == "bytes" then return b64encode(v) end
  if t == "enum" then return f.by_number and f.by_number[v] or v end
  if fields[t] then return from_pb(t, v) end
  return v
end

function from_pb(name, t)
  local fs = fields[name]
  for k, v in pairs(t) do
    local f = fs[k]
    if f.repeated then
      for i = 1, #v do v[i] = json_value(f, v[i]) end
    else
      t[k] = json_value(f, v)
    end
  end
  return t
end
M._from_pb = from_pb

-- libcurl before 8.0.0 breaks an h2c (prior knowledge) connection when it reuses it ("Error
-- in the HTTP2 framing layer"; curl pull request 10643), and over TLS it can report a gRPC
-- error status as a stream error (seen with 7.88.1 under load): gRPC needs libcurl 8.
local major = tonumber(tostring(core.versions.libcurl):match("^(%d+)")) or 0
M.h2c = major >= 8

local function no_h2c(url)
  return "transport 'grpc' on " .. url .. " needs libcurl 8.0 or newer, not "
    .. tostring(core.versions.libcurl) .. " (its HTTP/2 breaks reused h2c connections and gRPC error replies)"
end

-- gRPC methods live at fixed paths: an endpoint under a path (etcd behind a reverse proxy at
-- /etcd) cannot take them.
local function under_path(base)
  return base:find("^%a+://[^/]+/") ~= nil
end

local function no_path(url)
  return "transport 'grpc' cannot use the endpoint " .. url .. ": gRPC methods have fixed paths"
end

--- What a client with transport = "grpc" keeps in client.grpc (this module). Raises, as a
--- bad option would, when an endpoint given can never work: under a path, or any endpoint on
--- a libcurl before 8.
function M.client(self)
  for _, ep in ipairs(self.endpoints) do
    if under_path(ep.base) then error("bad option 'transport' to 'new' (" .. no_path(ep.url) .. ")", 3) end
    if not M.h2c then
      error("bad option 'transport' to 'new' (" .. no_h2c(ep.url) .. ")", 3)
    end
  end
  return M
end

-- The gRPC metadata of a call or stream to target t.
-- "token" is the key etcd's Go client sends the token under, and the only one etcd's
-- grpc-proxy hands on (etcd itself also reads "authorization", the gateway's).
local function metadata(t)
  return { token = t.token, hasleader = "true" }
end

-- A gRPC failure (kind "grpc") as the gateway's reply would have been classified.
local function grpc_error(err, classify, path)
  if err.kind ~= "grpc" then return err end
  local code = codes.code(err.code, err.message) -- behind etcd's grpc-proxy, code 2 and etcd's message
  return classify({ status = grpc.http_status[code] or 500, body = "" }, { message = err.message, code = code },
    path)
end

-- The gateway's streaming calls that coord sends one request on and reads one reply from,
-- each as a gRPC stream opened for that one exchange; the reply in the gateway's shape of
-- a stream's line, {result = ...}.
local exchanges = {
  ["/v3/lease/keepalive"] = { "/etcdserverpb.Lease/LeaseKeepAlive", "LeaseKeepAliveRequest", "LeaseKeepAliveResponse" },
}

M.exchanges = exchanges

local SNAPSHOT = "/v3/maintenance/snapshot"

-- A stream's failure as the gateway's stream would have reported it.
local function stream_classify(res, j, path)
  return require("coord.etcd")._stream_error(res.status, j, nil, path)
end

local function exchange(self, t, c, msg, opts)
  local s <close> = grpc.open(t, c[1], { timeout = opts and opts.timeout or self.timeout, metadata = metadata(t) })
  local ok, err = s:send(msg)
  if not ok then return nil, err end
  s:close_send()
  local reply
  reply, err = s:recv()
  if not reply then
    return nil, err or errors.new("closed", "gRPC stream " .. c[1] .. " ended without a reply", { url = t.url })
  end
  return reply
end

--- Sends the gateway call `path` with JSON body `data` to target t as its gRPC method:
--- returns the reply in the gateway's shape, or nil and an error classified as the gateway's
--- would be (classify: coord.etcd's server_error). nil, nil, "json" for a path with no mapping.
function M.send(self, t, path, data, opts, classify)
  local c = calls[path]
  local ex = not c and exchanges[path]
  c = c or ex
  if not c then return nil, nil, "json" end
  if under_path(t.url) then return nil, errors.new("invalid", no_path(t.url), { path = path }) end
  if not M.h2c then
    return nil, errors.new("invalid", no_h2c(t.url), { path = path })
  end
  local body = data and json_decode(data) or {}
  local msg = pb_encode(types[c[2]], to_pb(c[2], body))
  local reply, err
  if ex then
    reply, err = exchange(self, t, c, msg, opts)
  else
    reply, err = grpc.call(t, c[1], msg, {
      timeout = opts and opts.timeout or self.timeout,
      metadata = metadata(t),
      resend = opts and opts.idempotent or nil,
    })
  end
  if not reply then
    err = grpc_error(err, classify, path)
    err.path = path
    return nil, err
  end
  local j, why = pb_decode(types[c[3]], reply)
  if not j then return nil, errors.new("protocol", "etcd sent a malformed " .. c[3] .. ": " .. why, { path = path }) end
  j = from_pb(c[3], j)
  if ex then return { result = j } end
  return j
end

--- Opens Maintenance/Snapshot on target t, a server stream, for the whole transfer to take at
--- most timeout seconds: returns the stream (to close) and a reader of its messages, each
--- {blob (bytes), remaining_bytes, header}; nil at the end; nil and an error classified as the
--- gateway's would be. Or nil and an error when the stream cannot be opened.
function M.snapshot(t, timeout)
  if under_path(t.url) then return nil, errors.new("invalid", no_path(t.url), { path = SNAPSHOT }) end
  if not M.h2c then return nil, errors.new("invalid", no_h2c(t.url), { path = SNAPSHOT }) end
  local s = grpc.open(t, "/etcdserverpb.Maintenance/Snapshot", { timeout = timeout, metadata = metadata(t) })
  local ok, err = s:send(pb_encode(types.SnapshotRequest, {}))
  if not ok then
    s:close()
    return nil, err
  end
  s:close_send()
  local function read()
    local msg, rerr = s:recv()
    if not msg then
      if rerr then return nil, grpc_error(rerr, stream_classify, SNAPSHOT) end
      return nil
    end
    local r, why = pb_decode(types.SnapshotResponse, msg)
    if not r then return nil, errors.new("protocol", "etcd sent a malformed SnapshotResponse: " .. why) end
    r.remaining_bytes = r.remaining_bytes or 0
    return r
  end
  return s, read
end

---------------------------------------------------------------------------------------------
-- the watch hub's wire (coord.etcd.watch_hub): etcdserverpb.Watch/Watch, one bidirectional
-- stream carrying every watch; requests and replies in the gateway's JSON shape

local watch_wire = {}

M.watch_wire = watch_wire

--- Opens the Watch stream to target t (as coord.etcd's _target gives it).
function watch_wire.open(t, buffer)
  return grpc.open(t, "/etcdserverpb.Watch/Watch", { metadata = metadata(t), buffer = buffer })
end

--- Marks target t suspect after its stream went silent (coord.grpc.suspect): the next
--- stream to it is preceded by a probe.
function watch_wire.suspect(t)
  grpc.suspect(t)
end

--- Sends one WatchRequest given in the gateway's shape ({create_request = ...}, ...).
function watch_wire.send(s, msg)
  return s:send(pb_encode(types.WatchRequest, to_pb("WatchRequest", msg))) ~= nil
end

--- The next WatchResponse in the gateway's shape; nil at the end of the stream; nil and an
--- error classified as the gateway's would be.
function watch_wire.read(s)
  local msg, err = s:recv()
  if not msg then
    if err then return nil, grpc_error(err, stream_classify, "/v3/watch") end
    return nil
  end
  local j, why = pb_decode(types.WatchResponse, msg)
  if not j then return nil, errors.new("protocol", "etcd sent a malformed WatchResponse: " .. why) end
  return from_pb("WatchResponse", j)
end

return M
