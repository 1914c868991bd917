-- coord.etcd: an etcd v3 client over the JSON gateway: endpoints, failover, auth, KV and txn.
-- Leases, locks, elections and cluster calls live in coord/etcd/*.lua and are mixed in here.

local core = require "coord.core"
local http = require "coord.http"
local sched = require "coord.sched"
local errors = require "coord.errors"
local proto = require "coord.etcd.proto"
local discovery = require "coord.etcd.discovery"
local args = require "coord.args"
local pipeline = require "coord.pipeline"

local M = {}

local Client = { __name = "coord.etcd" }
Client.__index = Client
M.Client = Client

local json_encode, json_decode, now = core.json_encode, core.json_decode, core.now
local b64, kv_of, header_of, int = proto.b64, proto.kv, proto.header, proto.int
local kv_in_place, header_in_place, get_reply = proto.kv_in_place, proto.header_in_place, proto.get_reply
local pb_get, pb_header, pb_kv = proto.pb_get, proto.pb_header, proto.pb_kv

-- A put reply decoded from protobuf (see post_pb): the previous kv (false: none) and the header.
local function pb_put(j, strip)
  local prev = j.prev_kv
  return prev and pb_kv(prev, strip) or false, pb_header(j.header)
end

local DEFAULT_TIMEOUT = 5
local IDEMPOTENT = { idempotent = true }
local BACKOFF_BASE, BACKOFF_MAX = 0.1, 5
-- auto_sync after every endpoint failed: at most one member list read per this many seconds
local SYNC_RETRY = 1

---------------------------------------------------------------------------------------------
-- the client

-- One endpoint from a URL: http(s)://host[:port], or unix:///path (HTTP over that socket).
-- With tls.server_name, an https endpoint is asked for under that name (the certificate is
-- checked against it) while the connection goes to the URL's host and port. url is the
-- endpoint's identity; base is what requests are sent to. A path after host:port (etcd behind
-- a reverse proxy at /etcd) stays in base: every request, watch streams included, goes under it.
local function endpoint(u, tls)
  if not u:find("://", 1, true) then u = "http://" .. u end
  u = u:gsub("/+$", "")
  local ep = { url = u, base = u, backoff = sched.backoff(BACKOFF_BASE, BACKOFF_MAX), down_until = 0 }
  local path = u:match("^unix://(/.+)$")
  if path then
    ep.base, ep.unix_socket = "http://localhost", path
  elseif tls and tls.server_name and u:sub(1, 8) == "https://" then
    local authority, under = u:match("^https://([^/]*)(.*)$")
    local host, port = authority:match("^(.+):(%d+)$")
    if not host then host, port = authority, "443" end
    local name = tls.server_name
    ep.base = "https://" .. name .. ":" .. port .. under
    ep.connect_to = { name .. ":" .. port .. ":" .. host .. ":" .. port }
  end
  return ep
end

local function endpoint_list(opts)
  local eps = opts.endpoints
  if eps == nil then
    local env = os.getenv("ETCDCTL_ENDPOINTS")
    eps = {}
    for u in (env or "http://127.0.0.1:2379"):gmatch("[^,%s]+") do eps[#eps + 1] = u end
  elseif type(eps) == "string" then
    eps = { eps }
  elseif type(eps) ~= "table" then
    error("bad option 'endpoints' to 'new' (table or string expected, got " .. type(eps) .. ")", 3)
  end
  local list = {}
  for i, u in ipairs(eps) do
    if type(u) ~= "string" then
      error("bad option 'endpoints' to 'new' (string expected at index " .. i .. ", got " .. type(u) .. ")", 3)
    end
    list[i] = endpoint(u, opts.tls)
  end
  if #list == 0 then error("bad option 'endpoints' to 'new' (no endpoint given)", 3) end
  return list
end

--- A client. opts: endpoints (list of URLs, http(s)://host:port or unix:///path; default
--- ETCDCTL_ENDPOINTS, else http://127.0.0.1:2379), timeout (seconds per request, default 5),
--- user, password, tls = {ca_file, cert_file, key_file, server_name, ...} (as coord.http;
--- server_name: the name the server's certificate is checked against), prefix (a
--- namespace), auto_sync (seconds: refresh the endpoints from the member list that often,
--- and after every endpoint failed), discovery_srv (a domain: the endpoints come from its
--- DNS SRV records, with discovery_srv_name and dns_server; see coord.etcd.discovery),
--- transport ("json", the default: the JSON gateway; "grpc": etcd's gRPC, see doc/grpc.md).
function M.new(opts)
  opts = args.opts(opts, 1, "new")
  local tls = args.option(opts, "tls", "table", "new")
  local name = tls and tls.server_name
  if name ~= nil and (type(name) ~= "string" or not name:find("^[%w][%w%.%-]*$")) then
    error("bad option 'tls.server_name' to 'new' (a host name expected)", 2)
  end
  args.option(opts, "timeout", "number", "new")
  args.option(opts, "prefix", "string", "new")
  if args.option(opts, "user", "string", "new") then
    if type(opts.password) ~= "string" then
      error("bad option 'password' to 'new' (string expected, got " .. (math.type(opts.password) or type(opts.password)) .. ")", 2)
    end
  end
  local auto_sync = opts.auto_sync
  if auto_sync ~= nil and not (type(auto_sync) == "number" and auto_sync > 0) then
    error("bad option 'auto_sync' to 'new' (seconds above 0 expected)", 2)
  end
  local transport = args.option(opts, "transport", "string", "new")
  if transport ~= nil and transport ~= "json" and transport ~= "grpc" then
    error("bad option 'transport' to 'new' ('json' or 'grpc' expected, got '" .. transport .. "')", 2)
  end
  local disc = discovery.new(opts)
  local self = setmetatable({
    endpoints = disc and {} or endpoint_list(opts),
    discovery = disc, -- discovery_srv: the endpoints come from DNS at first use
    cur = 1,
    timeout = opts.timeout or DEFAULT_TIMEOUT,
    user = opts.user,
    password = opts.password,
    tls = tls,
    prefix = opts.prefix or "",
    token = nil,
    authing = nil, -- coroutines waiting for the authenticate in flight
    last_error = nil, -- the last endpoint failure, told when every endpoint is failing
    auto_sync = auto_sync,
    synced_at = -math.huge, -- when the member list was last read: the first call reads it
    sync_soon = false, -- every endpoint failed: read the list again, SYNC_RETRY after the last
    syncing = false,
  }, Client)
  self.seeds = self.endpoints
  if transport == "grpc" then self.grpc = require("coord.etcd.grpc").client(self) end
  return self
end

---------------------------------------------------------------------------------------------
-- transport

-- The healthy endpoint to use, starting from the current one; nil when every endpoint is
-- backing off after failures.
local function pick(self)
  if self.discovery then
    local ok, err = self.discovery:refresh(self)
    if not ok then return nil, err end
  end
  local eps = self.endpoints
  local ep = eps[self.cur]
  if ep and ep.down_until == 0 then return ep end -- the usual case: the current one never failed or recovered
  local t = now()
  for i = 0, #eps - 1 do
    local k = (self.cur - 1 + i) % #eps + 1
    if eps[k].down_until <= t then
      self.cur = k
      return eps[k]
    end
  end
  local last = self.last_error
  return nil, errors.new("unavailable", "all etcd endpoints are failing" .. (last and ("; last error: " .. tostring(last.message)) or ""),
    { cause = last })
end

-- Every call and the watch stream ask the member to refuse when it has no leader (gRPC
-- metadata hasleader=true): a member cut off from its cluster then answers at once with
-- code 14 "etcdserver: no leader", instead of holding a read or creating a watch that never
-- delivers.
local HASLEADER = "Grpc-Metadata-Hasleader"

local function target(self, ep)
  local https = ep.base:sub(1, 6) == "https:"
  return {
    url = ep.base,
    endpoint = ep.url,
    headers = { Authorization = self.token, [HASLEADER] = "true" },
    tls = self.tls,
    http_version = https and "2tls" or "1.1",
    pipewait = https or nil,
    unix_socket = ep.unix_socket,
    connect_to = ep.connect_to,
    token = self.token,
    urls = {},
  }
end

-- post's target for ep, built once per endpoint and token (send only reads it, so one
-- table serves every call until the token or the TLS options change).
local function cached_target(self, ep, with_token)
  local token = with_token and self.token or false
  local t = ep.target
  if t and ep.target_token == token and t.tls == self.tls then return t end
  t = target(self, ep)
  if not with_token then t.headers, t.token = { [HASLEADER] = "true" }, nil end
  ep.target, ep.target_token = t, token
  return t
end

--- Forgets `token` if it is still the current one, so the next call authenticates again.
function Client:_auth_expired(token)
  if self.token == token then self.token = nil end
end

local function no_leader(e)
  return e.code == 14 and tostring(e.message):find("no leader", 1, true) ~= nil
end

local auth_messages = { "invalid auth token", "user name is empty", "authentication failed", "revision of auth store is old" }
local kind_by_status = errors.by_status
local kind_by_code = { [3] = "invalid", [5] = "not_found", [7] = "permission", [8] = "exhausted",
  [14] = "unavailable", [16] = "auth" }

-- The coord error for a gateway reply with a status other than 200.
local function server_error(res, j, path)
  -- a streaming call's refusal nests its error: {"error": {message, code or grpc_code,
  -- http_code}} (3.4/3.5 say grpc_code, 3.6 code)
  local e = type(j) == "table" and j.error
  if type(e) == "table" then
    j = { message = e.message, code = e.grpc_code or e.code }
    res = { status = math.tointeger(e.http_code) or res.status, body = "" }
  end
  local msg = type(j) == "table" and (j.message or j.error)
  local code = type(j) == "table" and math.type(j.code) == "integer" and j.code or nil
  if type(msg) ~= "string" then msg = res.body ~= "" and res.body:sub(1, 200) or ("HTTP " .. res.status) end
  local kind = kind_by_code[code] or kind_by_status[res.status] or "http"
  if msg:find("compacted", 1, true) then kind = "compacted" end
  -- a value over the gateway's 2 MiB gRPC limit: code 8 like "too many requests", but it
  -- can never succeed
  if msg:find("larger than max", 1, true) then kind = "invalid" end
  -- the auth store's own refusal, handed on unconverted by some calls (code 2, HTTP 500:
  -- "auth: permission denied" to a snapshot by a user who is not root)
  if kind == "http" and msg:find("permission denied", 1, true) then kind = "permission" end
  for _, m in ipairs(auth_messages) do
    if msg:find(m, 1, true) then kind = "auth" end
  end
  return errors.new(kind, msg, { status = res.status, code = code, path = path })
end

-- The coord error for a failure a stream reports (the watch stream, a keepalive reply): a
-- refused stream's body, or an {"error": {...}} object inside the stream. body is the raw
-- text when j is not JSON.
local function stream_error(status, j, body, path)
  return server_error({ status = status or 500, body = body or "" }, j, path)
end
M._stream_error = stream_error

-- The error of a stream the server refused with status: its body (read, bounded) classified
-- as a call's reply is.
function M._refusal(s, status, path)
  local body = {}
  for _ = 1, 64 do
    local chunk = s:read()
    if not chunk then break end
    body[#body + 1] = chunk
  end
  body = table.concat(body)
  return stream_error(status, json_decode(body), body, path)
end

--- (internal) The next result of a JSON gateway stream s (the watch's and the snapshot's:
--- a line of JSON each, {"result": {...}} or {"error": {...}}): the result table; nil at the
--- end; nil and an error (a refused stream, an error line, a line that is not JSON). what
--- names the stream in messages, path classifies its errors.
function M._stream_result(s, path, what)
  if not s.status then
    local status, err = s:response()
    if not status then return nil, err end
    if status ~= 200 then return nil, M._refusal(s, status, path) end
  end
  while true do
    local line, err = s:read_line()
    if not line then return nil, err end
    if line ~= "" then
      local j = json_decode(line)
      if type(j) ~= "table" then
        return nil, errors.new("protocol", what .. ": invalid JSON: " .. line:sub(1, 200))
      end
      if j.error then return nil, stream_error(nil, j, nil, path) end
      if type(j.result) == "table" then return j.result end
    end
  end
end

local function stale_token(err)
  return err.kind == "auth" and (err.message:find("invalid auth token", 1, true)
    or err.message:find("auth store is old", 1, true)) and true or false
end

--- The pipeline's credential refresh, for calls and streams alike: when err says that
--- token (the one a request was sent with) is stale, forgets it so that the next pick
--- authenticates again (single-flight), and returns true: worth one more attempt.
function Client:_refresh(err, token)
  if not (token and stale_token(err)) then return false end
  self:_auth_expired(token)
  return true
end

-- The pipeline's "pick + credentials" step, shared by calls and streams: a token first when
-- the client has a user and none, the member list read again when auto_sync says so (not
-- for authenticate's own call, which that read would wait for), then a healthy endpoint.
local function acquire(self, with_token)
  if with_token and self.user and not self.token then
    local ok, aerr = self:_authenticate()
    if not ok then return nil, aerr end
  end
  local auto = with_token and self.auto_sync
  if auto and not self.syncing and now() >= self.synced_at + (self.sync_soon and SYNC_RETRY or auto) then
    self:sync()
  end
  local ep, err = pick(self)
  if ep or not auto then return ep, err end
  self.sync_soon = true
  if self.syncing or now() < self.synced_at + SYNC_RETRY or not self:sync() then return nil, err end
  return pick(self)
end

-- The etcd backend of coord.pipeline. A call: path, data (JSON text; nil: a GET),
-- idempotent, timeout, no_token (true for authenticate itself), at (one endpoint only,
-- for per-member calls).
local backend = {
  -- the endpoint is in trouble ("unknown": the connection died after the request was sent;
  -- "unavailable": no leader, or a 503)
  down = { connect = true, resolve = true, timeout = true, closed = true, unavailable = true, unknown = true },
}

function backend.pick(self, call)
  local at = call.at
  if at then
    if self.user and not self.token then
      local ok, err = self:_authenticate()
      if not ok then return nil, err end
    end
    return at
  end
  return acquire(self, not call.no_token)
end

-- The call is the coord.http request too: the endpoint's fields are set here, per attempt.
function backend.request(self, ep, call)
  local t = call.at and target(self, ep) or cached_target(self, ep, not call.no_token)
  -- (the target keeps the URL of each path it was asked for: the code's few fixed paths)
  local path = call.path
  local u = t.urls[path]
  if not u then
    u = t.url .. path
    t.urls[path] = u
  end
  call.url, call.headers, call.tls, call.token = u, t.headers, t.tls, t.token
  -- "1.1" stays explicit: with libcurl's default, libcurl 8 may put a plain call on an h2c
  -- connection a gRPC client of the same process has open to the endpoint
  call.http_version, call.pipewait, call.unix_socket, call.connect_to = t.http_version, t.pipewait,
    t.unix_socket, t.connect_to
  call.timeout = self.timeout
  return call
end

-- What send returns for a reply whose results pick read (they are in the call).
local PICKED = {}
local response = http._response

function backend.send(self, ep, req, call)
  if self.grpc then -- transport = "grpc": its unary calls (coord.etcd.grpc), the rest as below
    -- (the endpoint keeps its target while these stay: coord.grpc keeps its URLs and headers)
    local t = ep.grpc_target
    if not t or t.token ~= req.token or t.url ~= ep.base or t.tls ~= req.tls or t.unix_socket ~= req.unix_socket
      or t.connect_to ~= req.connect_to then
      t = { url = ep.base, tls = req.tls, token = req.token, unix_socket = req.unix_socket,
        connect_to = req.connect_to }
      ep.grpc_target = t
    end
    local j, err, json = self.grpc.send(self, t, call, { timeout = req.timeout, idempotent = call.idempotent },
      server_error)
    if not json then
      if not j then return nil, err end
      if call.pb then -- (post_pb: its pick reads the decoded reply)
        local kv, header = call.pick(j, #self.prefix)
        call.picked_kv, call.picked_header = kv, header
        return PICKED
      end
      return { grpc = j }
    end
    if call.tbl and not req.body then req.body = json_encode(call.tbl) end -- a path gRPC does not carry
  end
  local status, raw, body = http._exchange(req) -- (looked up per call: specs count the requests)
  if not status then
    raw.path = call.path
    return nil, raw
  end
  local pick = call.pick -- a get's: its results straight from the text, or nil to decode it
  if pick and status == 200 then
    local kv, header = pick(body, #self.prefix)
    if header then
      -- (kept in the call, which has room for them: no response table for a get)
      call.picked_kv, call.picked_header = kv or false, header
      return PICKED
    end
  end
  return response(status, raw, body)
end

function backend.classify(self, res, call)
  if res == PICKED then return call.picked_kv or nil, nil, call.picked_header end
  if res.grpc then return res.grpc end -- decoded by the gRPC transport
  local j = json_decode(res.body)
  if res.status ~= 200 then return nil, server_error(res, j, call.path) end
  if type(j) ~= "table" then
    return nil, errors.new("protocol", "etcd sent a reply that is not a JSON object", { status = res.status, path = call.path })
  end
  return j
end

function backend.failed(self, ep, err)
  local eps, listed = self.endpoints, false
  for _, e in ipairs(eps) do
    if e == ep then listed = true end
  end
  if not listed then return end -- an endpoint of _at
  ep.down_until = now() + ep.backoff:delay()
  self.last_error = err
  if eps[self.cur] == ep then self.cur = self.cur % #eps + 1 end
  if self.auto_sync then
    local t = now()
    for _, e in ipairs(eps) do
      if e.down_until <= t then return end
    end
    self.sync_soon = true
  end
end

-- (down_until is 0 until failed() moves the backoff on, and again once this resets it)
function backend.succeeded(_, ep)
  if ep.down_until ~= 0 then
    ep.backoff:reset()
    ep.down_until = 0
  end
end

function backend.size(self, call)
  return call.at and 1 or #self.endpoints
end

-- The token was refused as stale: forget it, the next attempt authenticates again.
function backend.refresh(self, err, call)
  return not call.no_token and self:_refresh(err, call.token)
end

function backend.transient() return false end

-- A member that refuses for want of a leader does so before the call's handler runs.
backend.never_sent = no_leader

--- Marks the endpoint with this URL as failing: calls move on to the next healthy one, and
--- it is tried again after a jittered exponential backoff. For the streams.
function Client:_failed(u, err)
  for _, ep in ipairs(self.endpoints) do
    if ep.url == u then return backend.failed(self, ep, err) end
  end
end

-- A call of the pipeline, which is also its coord.http request. A constructor sizes the table
-- for the fields it names: nine, those of a get over plain HTTP without auth (what
-- backend.request sets included), so that it is never resized; the others are set only
-- when they are not nil (no_token: authenticate's own call; the method is coord.http's
-- default: POST with a body, else GET). data: the JSON text of body when the caller made it
-- already; at: one endpoint only (_at).
-- Only an idempotent call may be sent again by libcurl when its connection dies before the
-- reply (see coord.http's resend).
-- pick: call.pick, see backend.send.
-- A gRPC client's call keeps body as it is (call.tbl): coord.etcd.grpc converts the table, and
-- its JSON text is made only for a path it does not carry (see backend.send).
local function post(self, path, body, opts, with_token, data, at, pick)
  local grpc = self.grpc
  if not grpc then data = data or body and json_encode(body) end
  local idempotent = opts and opts.idempotent
  local call = {
    path = path, idempotent = idempotent, body = data, resend = idempotent or nil,
    url = nil, headers = nil, timeout = nil, pick = pick, http_version = nil,
  }
  if grpc and body then call.tbl = body end
  local cap = opts and opts.timeout
  if cap then call.cap = cap end
  if at then call.at = at end
  if not with_token then call.no_token = true end
  return pipeline.run(backend, self, call)
end

-- The call of a gRPC client for the request pb, in the protobuf codec's shape already (bytes
-- and integers, not base64 and strings), whose results pick(reply, strip) reads straight from
-- the decoded reply: get's and put's, which run most, skip the gateway's shape both ways.
local function post_pb(self, path, pb, pick, opts)
  local idempotent = opts and opts.idempotent
  return pipeline.run(backend, self, {
    path = path, idempotent = idempotent, body = nil, resend = idempotent or nil,
    url = nil, headers = nil, timeout = nil, pick = pick, http_version = nil, pb = pb,
  })
end

--- POSTs body (a table, sent as JSON) to the gateway path (e.g. "/v3/kv/range") through
--- coord.pipeline and returns the decoded reply, or nil and an error. opts: idempotent (may
--- be repeated on another endpoint after a failure), timeout (the caller's cap on the whole
--- call, as for a lock that blocks: running out of it says nothing about the endpoint).
function Client:_post(path, body, opts)
  return post(self, path, body, opts, true)
end

--- Sends body (nil: a GET) to path on the endpoint with base URL `url` only, with the
--- client's token, re-authenticating once if it has expired. For per-member calls.
function Client:_at(u, path, body, opts)
  return post(self, path, body, opts, true, nil, endpoint(u, self.tls))
end

-- The client URLs of the voting members in a member list reply, each once.
local function member_urls(j)
  local out, seen = {}, {}
  for _, m in ipairs(type(j.members) == "table" and j.members or {}) do
    if not m.isLearner and type(m.clientURLs) == "table" then
      for _, u in ipairs(m.clientURLs) do
        if type(u) == "string" and not seen[u] then
          seen[u] = true
          out[#out + 1] = u
        end
      end
    end
  end
  return out
end

--- Reads the member list (from the first endpoint that answers: the current ones, then
--- the ones the client was created with) and makes the members' client URLs the endpoint
--- list; an endpoint that stays keeps its health. Returns the list of endpoint URLs, or
--- nil and an error (the list is then left as it was). While a refresh is running, another
--- caller gets the current list at once. With auto_sync, calls do this by themselves.
function Client:sync()
  if self.syncing then
    local urls = {}
    for i, ep in ipairs(self.endpoints) do urls[i] = ep.url end
    return urls
  end
  if self.discovery then self.discovery:refresh(self) end
  self.syncing = true
  local guard <close> = setmetatable({}, { __close = function() self.syncing = false end })
  self.synced_at = now()
  local tried, j, err = {}, nil, nil
  for _, list in ipairs { self.endpoints, self.seeds } do
    for i = 0, #list - 1 do
      local ep = list[(self.cur - 1 + i) % #list + 1]
      if not tried[ep.url] then
        tried[ep.url] = true
        j, err = self:_at(ep.url, "/v3/cluster/member/list", {}, IDEMPOTENT)
        if j then break end
      end
    end
    if j then break end
  end
  if not j then return nil, err end
  local urls = member_urls(j)
  if #urls == 0 then return nil, errors.new("protocol", "the member list has no client URLs") end
  self:_set_endpoints(self:_endpoints_for(urls))
  self.sync_soon = false
  return urls
end

--- Endpoints for a list of URLs: one the client already has keeps its health.
function Client:_endpoints_for(urls)
  local old = {}
  for _, ep in ipairs(self.endpoints) do old[ep.url] = ep end
  local list = {}
  for i, u in ipairs(urls) do list[i] = old[u] or endpoint(u, self.tls) end
  return list
end

--- Makes list the endpoint list; the current endpoint stays current if it is in it.
function Client:_set_endpoints(list)
  local cur = self.endpoints[self.cur]
  self.cur = 1
  for i, ep in ipairs(list) do
    if ep == cur then self.cur = i end
  end
  self.endpoints = list
end

-- Wakes every coroutine waiting for the authenticate in flight.
local function auth_done(self, ok, err)
  local waiting = self.authing
  self.authing = nil
  for _, w in ipairs(waiting or {}) do sched.wake(w, ok, err) end
end

local function auth_cancel(w)
  local list = w.client.authing
  for i = #(list or {}), 1, -1 do
    if list[i] == w then table.remove(list, i) end
  end
end

--- Gets a token for user/password. Only one authenticate is in flight at a time: other
--- callers wait for its outcome. Returns true, or nil and an error.
function Client:_authenticate()
  if self.authing then
    local w = setmetatable({ cancel = auth_cancel, client = self }, sched.Waiter)
    table.insert(self.authing, w)
    return sched.wait(w)
  end
  self.authing = {}
  -- a caller canceled mid-flight must not leave the others waiting for ever
  local guard <close> = setmetatable({}, { __close = function()
    if self.authing then auth_done(self, nil, errors.new("canceled", "authenticate was canceled")) end
  end })
  local j, err = post(self, "/v3/auth/authenticate", { name = self.user, password = self.password },
    { idempotent = true }, false)
  if j and type(j.token) ~= "string" then
    j, err = nil, errors.new("auth", "authenticate returned no token")
  end
  if j then self.token = j.token end
  if err and err.kind == "invalid" then err.kind = "auth" end
  auth_done(self, j and true, err)
  return j and true, err
end

--- The endpoint to talk to now, as {url (the base requests go to), endpoint (its URL as
--- given), headers, tls, http_version, pipewait, unix_socket, connect_to, token};
--- authenticates first when the client has a user and no token. Or nil and an error.
function Client:_target()
  local ep, err = acquire(self, true)
  if not ep then return nil, err end
  return target(self, ep)
end

---------------------------------------------------------------------------------------------
-- keys and ranges

local check, option = args.check, args.option

-- The raw key and range end (both with the namespace) that key and opts select.
local function key_range(self, key, opts, fname)
  local pfx = self.prefix
  local k = pfx .. key
  local re
  if opts.prefix then
    re = proto.prefix_end(k)
  elseif opts.range_end ~= nil then
    option(opts, "range_end", "string", fname)
    if opts.range_end == "\0" then
      re = pfx ~= "" and proto.prefix_end(pfx) or "\0"
    else
      re = pfx .. opts.range_end
    end
  end
  if k == "" then k = "\0" end
  return k, re
end
M._key_range = key_range

local sort_orders = { none = "NONE", ascend = "ASCEND", descend = "DESCEND" }
local sort_targets = { key = "KEY", version = "VERSION", create = "CREATE", create_revision = "CREATE",
  mod = "MOD", mod_revision = "MOD", value = "VALUE" }

local function enum(map, v, name, fname)
  if v == nil then return nil end
  local e = map[v]
  if not e then error(("bad option '%s' to '%s' (unknown value %s)"):format(name, fname, tostring(v)), 0) end
  return e
end

local function i64(v) return v and v ~= 0 and tostring(v) or nil end

-- A RangeRequest body for key and opts.
local function range_request(self, key, opts, fname)
  fname = fname or "range"
  local k, re = key_range(self, key, opts, fname)
  for _, name in ipairs { "limit", "revision", "min_mod_revision", "max_mod_revision", "min_create_revision",
    "max_create_revision" } do
    option(opts, name, "integer", fname)
  end
  return {
    key = b64(k), range_end = re and b64(re),
    limit = i64(opts.limit), revision = i64(opts.revision),
    sort_order = enum(sort_orders, opts.sort_order, "sort_order", fname),
    sort_target = enum(sort_targets, opts.sort_target, "sort_target", fname),
    serializable = opts.serializable or nil, keys_only = opts.keys_only or nil,
    count_only = opts.count_only or nil,
    min_mod_revision = i64(opts.min_mod_revision), max_mod_revision = i64(opts.max_mod_revision),
    min_create_revision = i64(opts.min_create_revision), max_create_revision = i64(opts.max_create_revision),
  }
end
M._range_request = range_request

local function kv_list(self, kvs, into)
  into = into or {}
  local strip = #self.prefix
  for _, j in ipairs(kvs or {}) do into[#into + 1] = kv_of(j, strip) end
  return into
end
M._kv_list = kv_list

-- The list a range reply makes: kvs in order, plus `count` and `more`.
local function range_result(self, j)
  local list = kv_list(self, j.kvs)
  list.count, list.more = int(j.count), j.more == true
  return list
end
M._range_result = range_result

--- The kv at key: `kv, nil, header`; `nil, nil, header` when the key is absent; `nil, err`
--- on failure. opts: revision, serializable.
-- The RangeRequest text of a get without options, by raw key: recent keys' texts are kept, so
-- that reading the same keys over and over does not encode them each time. Bounded: emptied
-- when it reaches 1024 keys.
local get_bodies, nget_bodies = {}, 0

function Client:get(key, opts)
  if type(key) ~= "string" then check(key, "string", 1, "get") end
  local revision, serializable
  if opts ~= nil then
    check(opts, "table", 2, "get")
    revision, serializable = option(opts, "revision", "integer", "get"), opts.serializable
  end
  -- the RangeRequest of range_request for one key, without the options get does not take
  local k = self.prefix .. key
  if k == "" then k = "\0" end
  local j, err, header
  if self.grpc then
    j, err, header = post_pb(self, "/v3/kv/range", { key = k, revision = revision, serializable = serializable and true or nil },
      pb_get, IDEMPOTENT)
  elseif revision or serializable then
    j, err, header = post(self, "/v3/kv/range", { key = b64(k), revision = i64(revision),
      serializable = serializable or nil }, IDEMPOTENT, true, nil, nil, get_reply)
  else
    -- (base64 needs no JSON escaping: the text json_encode would make, without its table)
    local data = get_bodies[k]
    if not data then
      data = '{"key":"' .. b64(k) .. '"}'
      if #k <= 256 then -- (long keys are not kept)
        if nget_bodies >= 1024 then get_bodies, nget_bodies = {}, 0 end
        get_bodies[k], nget_bodies = data, nget_bodies + 1
      end
    end
    j, err, header = post(self, "/v3/kv/range", nil, IDEMPOTENT, true, data, nil, get_reply)
  end
  if header then return j, nil, header end -- read by proto.get_reply
  if not j then return nil, err end
  -- (the reply's own kv and header tables become the results: two tables less per get)
  local kv = j.kvs and j.kvs[1]
  return kv and kv_in_place(kv, #self.prefix) or nil, nil, header_in_place(j.header)
end

-- Reads a range in pages of `size` keys, all at the revision of the first page.
local function range_pages(self, body, size)
  body.limit = tostring(size)
  local list, first
  while true do
    local j, err = self:_post("/v3/kv/range", body, IDEMPOTENT)
    if not j then return nil, err end
    if not list then
      list, first = range_result(self, j), j
      body.revision = tostring(header_of(j.header).revision)
    else
      kv_list(self, j.kvs, list)
    end
    local kvs = j.kvs
    if not j.more or not kvs or #kvs == 0 then break end
    body.key = b64(proto.bytes(kvs[#kvs].key) .. "\0")
  end
  list.more = false
  return list, nil, header_of(first.header)
end

--- The kvs in a range: `list, nil, header`, the list with fields count (keys in the range)
--- and more (the limit cut it short); an empty range is an empty list. opts: prefix,
--- range_end, limit, revision, sort_order, sort_target, keys_only, count_only, serializable,
--- min/max_mod/create_revision, page_size (read it all in pages at one revision).
function Client:range(key, opts)
  check(key, "string", 1, "range")
  opts = args.opts(opts, 2, "range")
  local body = range_request(self, key, opts)
  if opts.page_size ~= nil then
    option(opts, "page_size", "integer", "range")
    if opts.limit or opts.sort_order or opts.sort_target or opts.count_only then
      error("bad argument #2 to 'range' (page_size cannot be combined with limit, sort or count_only)", 2)
    end
    return range_pages(self, body, opts.page_size)
  end
  local j, err = self:_post("/v3/kv/range", body, IDEMPOTENT)
  if not j then return nil, err end
  return range_result(self, j), nil, header_of(j.header)
end

local function put_request(self, key, value, opts, fname)
  option(opts, "lease", "integer", fname or "put")
  return {
    key = b64(self.prefix .. key), value = value and b64(value),
    lease = i64(opts.lease), prev_kv = opts.prev_kv or nil,
    ignore_value = opts.ignore_value or nil, ignore_lease = opts.ignore_lease or nil,
  }
end
M._put_request = put_request

local function prev_of(self, j)
  return j.prev_kv and kv_of(j.prev_kv, #self.prefix) or nil
end
M._prev_of = prev_of

--- Sets key to value: `true, nil, header`, and with opts.prev_kv the previous kv (nil when
--- the key was new) 4th. opts: lease, prev_kv, ignore_value (value may be nil),
--- ignore_lease. Never retried on another endpoint unless the request was certainly not sent.
function Client:put(key, value, opts)
  check(key, "string", 1, "put")
  opts = args.opts(opts, 3, "put")
  check(value, "string", 2, "put", opts.ignore_value)
  if self.grpc then
    local lease = option(opts, "lease", "integer", "put")
    local prev, err, header = post_pb(self, "/v3/kv/put", { key = self.prefix .. key, value = value,
      lease = lease, prev_kv = opts.prev_kv and true or nil, ignore_value = opts.ignore_value and true or nil,
      ignore_lease = opts.ignore_lease and true or nil }, pb_put) -- (flags: truthy, as the JSON text takes them)
    if not header then return nil, err end
    return true, nil, header, prev or nil
  end
  local j, err = self:_post("/v3/kv/put", put_request(self, key, value, opts))
  if not j then return nil, err end
  return true, nil, header_of(j.header), prev_of(self, j)
end

local function delete_request(self, key, opts, fname)
  local k, re = key_range(self, key, opts, fname or "delete")
  return { key = b64(k), range_end = re and b64(re), prev_kv = opts.prev_kv or nil }
end
M._delete_request = delete_request

local function delete_result(self, j)
  return int(j.deleted), j.prev_kvs and kv_list(self, j.prev_kvs) or nil
end

--- Deletes key (or a range: prefix, range_end): `n, nil, header` with n the number of keys
--- deleted (0 when there was none), and with opts.prev_kv the list of deleted kvs 4th.
function Client:delete(key, opts)
  check(key, "string", 1, "delete")
  opts = args.opts(opts, 2, "delete")
  local j, err = self:_post("/v3/kv/deleterange", delete_request(self, key, opts))
  if not j then return nil, err end
  local n, prev = delete_result(self, j)
  return n, nil, header_of(j.header), prev
end
M._delete_result = delete_result

--- Compacts the key-value history up to revision: `true, nil, header`. opts: physical
--- (wait until the space is reclaimed).
function Client:compact(revision, opts)
  check(revision, "integer", 1, "compact")
  opts = args.opts(opts, 2, "compact")
  local j, err = self:_post("/v3/kv/compaction", { revision = tostring(revision), physical = opts.physical or nil },
    IDEMPOTENT)
  if not j then return nil, err end
  return true, nil, header_of(j.header)
end

---------------------------------------------------------------------------------------------
-- watches (coord/etcd/watch.lua)

--- A watch on key (or a range): `w, nil, nil, w` (the 4th closes it with a generic for);
--- see coord.etcd.watch.
function Client:watch(key, opts)
  return require("coord.etcd.watch").new(self, key, opts)
end

---------------------------------------------------------------------------------------------
-- the rest of the API, in one file per service

for _, name in ipairs { "coord.etcd.txn", "coord.etcd.lease", "coord.etcd.lock", "coord.etcd.election",
  "coord.etcd.cluster", "coord.etcd.maintenance", "coord.etcd.auth", "coord.etcd.recipes" } do
  require(name)(Client, M)
end
require("coord.args").methods(Client)

return M
