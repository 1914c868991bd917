-- coord.etcd.grpc: the etcd client's unary calls over etcd's native gRPC (transport = "grpc").
-- One request body in the gateway's JSON shape goes out as its protobuf message, and the reply
-- comes back in the gateway's JSON shape, so everything above the transport stays as it is.

local core = require "coord.core"
local grpc = require "coord.grpc"
local sched = require "coord.sched"
local errors = require "coord.errors"
local schema = require "coord.etcd.pb_schema"
local codes = require "coord.etcd.grpc_codes"

local M = {}

local pb_encode, pb_decode, json_decode = core.pb_encode, core.pb_decode, core.json_decode
local b64encode, b64decode, i64, u64 = core.b64encode, core.b64decode, core.i64, core.u64
local types, messages, enums = schema.types, schema.messages, schema.enums
local pb_kv = require("coord.etcd.proto").pb_kv

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
-- (one table per target: coord.grpc keeps what it derives from a target's metadata with it)
local metadatas = setmetatable({}, { __mode = "k" })

local function metadata(t)
  local md = metadatas[t]
  if not md or md.token ~= t.token then
    md = { token = t.token, hasleader = "true" }
    metadatas[t] = md
  end
  return md
end

-- A gRPC failure (kind "grpc") as the gateway's reply would have been classified.
local function grpc_error(err, classify, path)
  if err.kind ~= "grpc" then return err end
  local code = codes.code(err.code, err.message) -- behind etcd's grpc-proxy, code 2 and etcd's message
  return classify({ status = grpc.http_status[code] or 500, body = "" }, { message = err.message, code = code },
    path)
end

-- The gateway's streaming calls that coord sends one request on and reads one reply for:
-- lease keepalives, on the client's LeaseKeepAlive streams (below); the reply in the
-- gateway's shape of a stream's line, {result = ...}.
local KEEPALIVE = "/etcdserverpb.Lease/LeaseKeepAlive"
local exchanges = {
  ["/v3/lease/keepalive"] = { KEEPALIVE, "LeaseKeepAliveRequest", "LeaseKeepAliveResponse" },
}

M.exchanges = exchanges

local SNAPSHOT = "/v3/maintenance/snapshot"

-- A stream's failure as the gateway's stream would have reported it.
local function stream_classify(res, j, path)
  return require("coord.etcd")._stream_error(res.status, j, nil, path)
end

---------------------------------------------------------------------------------------------
-- lease keepalives: while any keeper (Client:keepalive) of a client runs, its renewals share
-- one LeaseKeepAlive stream per target (endpoint, socket, redirect), as etcd's Go client
-- does, instead of one stream (and a probe before it) per renewal. Requests go out as they
-- come; etcd answers each in order with the lease's ID, which hands the reply to the oldest
-- waiter for that ID. A stream that fails or ends fails its waiters (the pipeline then tries
-- again, a keepalive being idempotent); one that gives a waiter no reply within its timeout
-- is taken for dead and closed with its waiters, so the next renewal opens a new one. With no
-- keeper running a stream is closed once its last reply is in: a lone keepalive_once costs
-- one short stream, as before.

local leases = setmetatable({}, { __mode = "k" }) -- client -> { keepers = n, streams = {key -> ls} }

local function lease_state(self)
  local st = leases[self]
  if not st then
    st = { keepers = 0, streams = {} }
    leases[self] = st
  end
  return st
end

local function target_key(t)
  return t.url .. "|" .. tostring(t.unix_socket) .. "|" .. (t.connect_to and table.concat(t.connect_to, ",") or "")
end

-- Ends ls: closes its stream and wakes every waiter still waiting with err.
local function lease_end(st, ls, err)
  if ls.ended then return end
  ls.ended = true
  if st.streams[ls.key] == ls then st.streams[ls.key] = nil end
  ls.s:close()
  if ls.closing then sched.wake(ls.closing) end
  local waiting = ls.waiting
  ls.waiting, ls.n, ls.live = {}, 0, 0
  for _, q in pairs(waiting) do
    for _, w in ipairs(q) do sched.wake(w, nil, err) end
  end
end

-- Whether ls is left with nothing to do: no reply awaited, and no keeper to use it again
-- (or a newer stream took its place: a new token).
local function lease_idle(st, ls)
  return ls.n == 0 and (st.keepers == 0 or st.streams[ls.key] ~= ls)
end

-- seconds etcd has to end a stream whose requests have ended before it is closed (canceled)
local RETIRE_WAIT = 2

-- Retires an idle ls: no more requests go on it, and its sending side ends, so that etcd ends
-- the stream (a canceled HTTP/2 stream's reset may wait in libcurl until the connection is
-- used again, leaving etcd's side open); closed after RETIRE_WAIT s if etcd does not.
local function lease_retire(st, ls)
  if st.streams[ls.key] == ls then st.streams[ls.key] = nil end
  if ls.retired or ls.ended then return end
  ls.retired, ls.closing = true, sched.waiter()
  ls.s:close_send()
  sched.spawn(function()
    sched.timeout(RETIRE_WAIT, sched.wait, ls.closing) -- (woken by lease_end)
    lease_end(st, ls)
  end)
end

local function lease_reader(st, ls)
  while not ls.ended do
    local msg, err = ls.s:recv()
    if not msg then
      err = err and grpc_error(err, stream_classify, "/v3/lease/keepalive")
        or errors.new("closed", "etcd ended the LeaseKeepAlive stream", { url = ls.url })
      return lease_end(st, ls, err)
    end
    local r, why = pb_decode(types.LeaseKeepAliveResponse, msg)
    if not r then
      return lease_end(st, ls, errors.new("protocol", "etcd sent a malformed LeaseKeepAliveResponse: " .. why))
    end
    local id = r.ID or 0
    local q = ls.waiting[id]
    if q then
      local w = table.remove(q, 1)
      if #q == 0 then ls.waiting[id] = nil end
      ls.n = ls.n - 1
      if not w.gone then
        ls.live = ls.live - 1
        sched.wake(w, r)
      end
    end
    if lease_idle(st, ls) then lease_retire(st, ls) end
  end
end

-- A waiter whose caller went away (canceled, timed out) keeps its place: its reply is still
-- to come, and must not go to the next waiter for the same lease. When no keeper runs and no
-- one waits any more, the stream is retired (its replies may never come: a dead stream).
local function abandon(w)
  if w.gone or w.done then return end
  w.gone = true
  local st, ls = w.st, w.ls
  ls.live = ls.live - 1
  if ls.live == 0 and st.keepers == 0 then lease_retire(st, ls) end
end

-- The client's stream to target t (key), if it has one for t's token.
local function lease_current(st, key, t)
  local ls = st.streams[key]
  if ls and ls.token ~= t.token then -- a new token: a new stream, the old one ends when idle
    st.streams[key] = nil
    if lease_idle(st, ls) then lease_retire(st, ls) end
    ls = nil
  end
  return ls
end

-- The stream a renewal to target t goes on: the client's, or a new one. Only the probe before
-- a new one waits, and a stream another renewal opened meanwhile is taken instead, so the
-- caller has its stream with nothing between it and its request that could end it.
local function lease_stream(st, t)
  local key = target_key(t)
  local ls = lease_current(st, key, t)
  if ls then return ls end
  grpc._probe(t)
  ls = lease_current(st, key, t)
  if ls then return ls end
  ls = { key = key, url = t.url, token = t.token, waiting = {}, n = 0, live = 0,
    s = grpc.open(t, KEEPALIVE, { metadata = metadata(t), probe = false }) }
  st.streams[key] = ls
  sched.spawn(lease_reader, st, ls)
  return ls
end

-- One keepalive of lease id (its request message msg) on the client's stream to t. Returns
-- the decoded LeaseKeepAliveResponse, or nil and an error.
local function lease_exchange(self, t, msg, id, timeout)
  local st = lease_state(self)
  local ls = lease_stream(st, t)
  local ok, err = ls.s:send(msg)
  if not ok then
    lease_end(st, ls, err)
    return nil, err
  end
  local w = sched.waiter(abandon)
  w.st, w.ls = st, ls
  local q = ls.waiting[id]
  if not q then
    q = {}
    ls.waiting[id] = q
  end
  q[#q + 1] = w
  ls.n, ls.live = ls.n + 1, ls.live + 1
  local reply, werr
  if timeout and timeout > 0 then
    reply, werr = sched.timeout(timeout, sched.wait, w)
  else
    reply, werr = sched.wait(w)
  end
  if reply then return reply end
  if werr and werr.kind == "timeout" and not w.done then
    -- no reply in the whole timeout: the stream (or its connection) is taken for dead
    werr = errors.new("timeout", ("no LeaseKeepAlive reply within %g s"):format(timeout), { url = t.url })
    grpc.suspect(t)
    lease_end(st, ls, werr)
  end
  return nil, werr
end

--- (for coord.etcd.lease) A keeper of the client starts (delta 1) or ends (-1): while any
--- runs, the client's LeaseKeepAlive streams stay open between renewals.
function M._keepers(self, delta)
  local st = lease_state(self)
  st.keepers = st.keepers + delta
  if st.keepers == 0 then
    local idle = {}
    for _, ls in pairs(st.streams) do
      if lease_idle(st, ls) then idle[#idle + 1] = ls end
    end
    for _, ls in ipairs(idle) do lease_retire(st, ls) end
  end
end

--- (for the specs) The number of LeaseKeepAlive streams the client has open.
function M._lease_streams(self)
  local n = 0
  for _ in pairs(lease_state(self).streams) do n = n + 1 end
  return n
end

--- Sends a call of coord.etcd's pipeline to target t as the gRPC method of its gateway path:
--- returns the reply, or nil and an error classified as the gateway's would be (classify:
--- coord.etcd's server_error); nil, nil, "json" for a path with no mapping. The request is
--- call.pb (in the codec's shape, and then so is the reply: as decoded), else call.tbl or the
--- JSON text call.body in the gateway's shape, and then the reply is in the gateway's shape.
function M.send(self, t, call, opts, classify)
  local path = call.path
  local c = calls[path]
  local ex = not c and exchanges[path]
  c = c or ex
  if not c then return nil, nil, "json" end
  if under_path(t.url) then return nil, errors.new("invalid", no_path(t.url), { path = path }) end
  if not M.h2c then
    return nil, errors.new("invalid", no_h2c(t.url), { path = path })
  end
  local req = call.pb
  if not req then
    local data = call.body
    req = to_pb(c[2], call.tbl or data and json_decode(data) or {})
  end
  local msg = pb_encode(types[c[2]], req)
  local reply, err, j
  if ex then
    j, err = lease_exchange(self, t, msg, req.ID or 0, opts and opts.timeout or self.timeout)
    reply = j
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
  if not j then
    local why
    j, why = pb_decode(types[c[3]], reply)
    if not j then return nil, errors.new("protocol", "etcd sent a malformed " .. c[3] .. ": " .. why, { path = path }) end
  end
  if call.pb then return j end
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

--- The next WatchResponse in the gateway's shape but for its events, which are as decoded
--- (read with watch_wire.kv); nil at the end of the stream; nil and an error classified as
--- the gateway's would be.
function watch_wire.read(s)
  local msg, err = s:recv()
  if not msg then
    if err then return nil, grpc_error(err, stream_classify, "/v3/watch") end
    return nil
  end
  local j, why = pb_decode(types.WatchResponse, msg)
  if not j then return nil, errors.new("protocol", "etcd sent a malformed WatchResponse: " .. why) end
  return j -- (the rest of a WatchResponse has no bytes and no enum)
end

-- How the hub reads an event of a decoded WatchResponse: its kvs as decoded, its type a number.
watch_wire.kv, watch_wire.DELETE = pb_kv, enums["Event.EventType"].DELETE

return M
