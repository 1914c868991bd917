-- coord.consul: a Consul HTTP API client: the transport (_call) and the API objects built on it.

local core = require "coord.core"
local http = require "coord.http"
local sync = require "coord.sync"
local errors = require "coord.errors"
local url = require "coord.url"
local args = require "coord.args"
local pipeline = require "coord.pipeline"

local M = {}

local Client = { __name = "coord.consul.client" }

-- The API objects load on first use: client.kv, client.txn, ... Each module's new(client)
-- builds the object once per client.
local apis = {
  kv = "coord.consul.kv", txn = "coord.consul.txn", agent = "coord.consul.agent",
  health = "coord.consul.health", catalog = "coord.consul.catalog", status = "coord.consul.status",
  event = "coord.consul.event", session = "coord.consul.session",
  acl = "coord.consul.acl",
  query = "coord.consul.query", coordinate = "coord.consul.coordinate", operator = "coord.consul.operator",
}

function Client.__index(self, k)
  local name = apis[k]
  if name then
    local api = require(name).new(self)
    rawset(self, k, api)
    return api
  end
  return Client[k]
end

---------------------------------------------------------------------------------------------
-- the client

local function getenv(name)
  local v = os.getenv(name)
  if v == "" then return nil end
  return v
end

-- The token in a token file, trimmed; or nil and the reason it cannot be read.
local function read_token_file(path)
  local f, err = io.open(path, "r")
  if not f then return nil, err end
  local s = f:read("a")
  f:close()
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

local function falsy(s)
  return s == "0" or s == "false" or s == "FALSE" or s == "False" or s == "f" or s == "F"
end

-- Default TLS options from the environment, as the official client reads them.
local function env_tls()
  local t = { ca_file = getenv("CONSUL_CACERT"), ca_path = getenv("CONSUL_CAPATH"),
    cert_file = getenv("CONSUL_CLIENT_CERT"), key_file = getenv("CONSUL_CLIENT_KEY") }
  local verify = getenv("CONSUL_HTTP_SSL_VERIFY")
  if verify then t.verify = not falsy(verify) end
  if next(t) then return t end
  return nil
end

-- Splits an address into the base URL and, for unix://, the socket path.
local function parse_address(addr, tls)
  local path = addr:match("^unix://(.+)$")
  if path then return "http://localhost", path end
  if addr:find("^https?://") then return (addr:gsub("/+$", "")) end
  local ssl = getenv("CONSUL_HTTP_SSL")
  local scheme = (tls or (ssl and not falsy(ssl))) and "https" or "http"
  return scheme .. "://" .. addr:gsub("/+$", "")
end

-- Concurrent requests to one agent, shared by every client of this process: the agent
-- refuses more than 200 connections per client IP, and a blocking query holds one for its
-- whole wait. Blocking queries get at most limit - reserve permits, so plain calls always
-- find a free one.
local limits = {}

local function limiter(agent, n)
  local l = limits[agent]
  if not l then
    local reserve = math.max(1, n // 8)
    l = { all = sync.semaphore(n), blocking = sync.semaphore(math.max(1, n - reserve)) }
    limits[agent] = l
  end
  return l
end

local consistencies = { default = true, stale = true, consistent = true }

-- One agent or server the client can talk to: its base URL, Unix socket, and the
-- connection limit it shares with every client of that address in the process.
local function agent_of(address, tls, max)
  local base, socket = parse_address(address, tls)
  return { base = base, unix_socket = socket, limit = limiter(base .. (socket or ""), max) }
end

-- The addresses of opts.address: one string, or a list of them (tried in turn on failure).
local function address_list(address)
  if type(address) == "string" then return { address } end
  if type(address) ~= "table" or #address == 0 then
    error("bad argument #1 to 'new' (address: string or non-empty list of strings expected, got " .. type(address) .. ")", 3)
  end
  for i, a in ipairs(address) do
    if type(a) ~= "string" then
      error(("bad argument #1 to 'new' (address: string expected at index %d, got %s)"):format(i, type(a)), 3)
    end
  end
  return address
end

--- A client. opts: address ("host:port", "http(s)://host:port" or "unix:///path", or a list
--- of them to fail over between; default CONSUL_HTTP_ADDR or 127.0.0.1:8500), token
--- (CONSUL_HTTP_TOKEN), token_file (CONSUL_HTTP_TOKEN_FILE: read again when Consul answers
--- "ACL not found"),
--- datacenter, namespace, partition, consistency ("default", "stale", "consistent"),
--- tls = {ca_file, ca_path, cert_file, key_file, verify} (CONSUL_CACERT, CONSUL_CAPATH,
--- CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY, CONSUL_HTTP_SSL_VERIFY), timeout (30 s),
--- max_connections (100: concurrent requests to this agent from this process).
function M.new(opts)
  opts = args.opts(opts, 1, "new")
  local addresses = address_list(opts.address or getenv("CONSUL_HTTP_ADDR") or "127.0.0.1:8500")
  local token, token_file = opts.token, opts.token_file
  if token_file ~= nil and type(token_file) ~= "string" then
    error("bad argument #1 to 'new' (token_file: string expected, got " .. type(token_file) .. ")", 2)
  end
  if token == nil and token_file == nil then
    token = getenv("CONSUL_HTTP_TOKEN")
    if not token then token_file = getenv("CONSUL_HTTP_TOKEN_FILE") end
  end
  if token_file then
    local err
    token, err = read_token_file(token_file)
    if not token then error("coord.consul: cannot read the token file: " .. err, 2) end
  end
  local consistency = opts.consistency or "default"
  if not consistencies[consistency] then
    error("bad argument #1 to 'new' (consistency: default, stale or consistent expected, got " .. tostring(consistency) .. ")", 2)
  end
  local tls = opts.tls or env_tls()
  local max = opts.max_connections or 100
  if math.type(max) ~= "integer" or max < 1 then
    error("bad argument #1 to 'new' (max_connections: positive integer expected)", 2)
  end
  local agents = {}
  for i, a in ipairs(addresses) do agents[i] = agent_of(a, opts.tls, max) end
  -- false, not nil, for what is not set: a read of an absent field would call Client.__index
  -- (a Lua function), and the hot path reads these on every call
  local self = {
    agents = agents, cur = 1, token = token ~= "" and token or false, token_file = token_file or false,
    datacenter = opts.datacenter or false, namespace = opts.namespace or false,
    partition = opts.partition or false,
    consistency = consistency, tls = tls or false, timeout = opts.timeout or 30, _shared = {},
  }
  -- base, unix_socket and limit: those of the agent in use
  self.base, self.unix_socket, self.limit = agents[1].base, agents[1].unix_socket, agents[1].limit
  self.plain = not (self.datacenter or self.namespace or self.partition) and consistency == "default"
  return setmetatable(self, Client)
end

--- Replaces the token the client sends (nil or "": none). Calls made from now on use it,
--- blocking reads and watches from their next round; a token file is no longer read.
function Client:set_token(token)
  if token ~= nil and type(token) ~= "string" then
    error("bad argument #1 to 'set_token' (string or nil expected, got " .. type(token) .. ")", 2)
  end
  self.token = token ~= "" and token or false
  self.token_file = false
  return true
end

---------------------------------------------------------------------------------------------
-- the transport

local function duration(s)
  return ("%dms"):format(math.ceil(s * 1000))
end

-- The wait of a blocking read whose whole call must end within timeout seconds: Consul
-- answers after wait plus up to wait/16 of jitter, so the wait is shortened until that
-- answer, and a margin for the round trip (a tenth of timeout, at most 0.5 s), fit in it.
-- Never below 1 ms: Consul reads a wait of 0 as its default of 5 minutes.
local function capped_wait(wait, timeout)
  local max = (timeout - math.min(0.5, timeout / 10)) * 16 / 17
  return math.max(math.min(wait, max), 0.001)
end

-- q is nil until the first parameter (most reads have none): returns the list
local function add(q, k, v)
  if v == nil or v == false then return q end
  q = q or {}
  q[#q + 1] = v == true and k or k .. "=" .. url.query(tostring(v))
  return q
end

-- The query parameters of a call, a list of "k=v" texts; nil when there are none.
local function build_query(self, method, opts, wait)
  local q
  if opts.query then
    for k, v in pairs(opts.query) do q = add(q, k, v) end
  end
  q = add(q, "dc", opts.dc or self.datacenter)
  q = add(q, "ns", opts.ns or self.namespace)
  q = add(q, "partition", opts.partition or self.partition)
  local consistency = opts.consistency
    or (opts.stale and "stale") or (opts.consistent and "consistent")
    or (method == "GET" and self.consistency)
  if consistency == "stale" or consistency == "consistent" then q = add(q, consistency, true) end
  if opts.cached then q = add(q, "cached", true) end
  if opts.index then q = add(q, "index", core.u64tostring(opts.index ~= 0 and opts.index or 1)) end
  q = add(q, "hash", opts.hash)
  if wait then q = add(q, "wait", duration(wait)) end
  return q
end

local header, u64 = core.header, core.u64

-- The metadata of every reply. All its headers are read in one pass over the raw header
-- block (core.header takes several names), not one pass per header.
-- A read through the agent cache (cached) also says whether the cache had it (X-Cache:
-- "HIT" or "MISS") and how old the value is (Age, seconds).
-- A plain reply's meta holds only its status and, under the private key RAW, the header
-- block: its other fields are read from that block the first time the meta is read beyond
-- status (a field, pairs, tostring, a write), most callers never reading them.
local Meta = errors.record("consul.meta")
local RAW = setmetatable({}, { __name = "consul.meta.raw" })

local function fill(m, raw)
  local index, lc, kl, consistency, content_hash, acl = header(raw,
    "X-Consul-Index", "X-Consul-LastContact", "X-Consul-KnownLeader",
    "X-Consul-Effective-Consistency", "X-Consul-ContentHash", "X-Consul-Default-ACL-Policy")
  lc = lc and u64(lc)
  m.index = index and u64(index) or nil
  m.known_leader = kl and kl == "true" or nil
  m.last_contact = lc and lc / 1000 or nil
  m.consistency, m.content_hash, m.default_acl_policy = consistency, content_hash, acl
  return m
end

-- the fields of a lazy meta, once; false when they already are
local function settle(m)
  local raw = rawget(m, RAW)
  if not raw then return false end
  m[RAW] = nil
  fill(m, raw)
  return true
end

function Meta.__index(m, k)
  if settle(m) then return rawget(m, k) end
  return nil
end

function Meta.__newindex(m, k, v)
  settle(m)
  rawset(m, k, v)
end

function Meta.__pairs(m)
  settle(m)
  return next, m, nil
end

local record_tostring = Meta.__tostring
function Meta.__tostring(m)
  settle(m)
  return record_tostring(m)
end

local function meta_of(status, raw, cached)
  if cached then
    local m = fill({ status = status }, raw)
    local cache, age = header(raw, "X-Cache", "Age")
    m.cache, m.age = cache, age and tonumber(age) or nil
    return setmetatable(m, Meta)
  end
  return setmetatable({ status = status, [RAW] = raw }, Meta)
end

local function accepted(list, status)
  if status >= 200 and status < 300 then return true end
  if list then
    for i = 1, #list do
      if list[i] == status then return true end
    end
  end
  return false
end

-- The portable kind of a Consul error reply (errors.by_status); any other status is an
-- "http" error. A 403 whose token is unknown to Consul is "auth", not "permission".
local kind_by_status = errors.by_status

local function error_kind(status, text)
  if status == 403 and text:find("ACL not found", 1, true) then return "auth" end
  if status == 500 and text:find("No cluster leader", 1, true) then return "unavailable" end
  return kind_by_status[status] or "http"
end

local function server_error(res, method, url)
  local text = (res.body or ""):gsub("^%s+", ""):gsub("%s+$", "")
  if #text > 500 then text = text:sub(1, 500) .. "..." end
  if text == "" then text = "HTTP " .. res.status end
  return nil, errors.new(error_kind(res.status, text), text,
    { status = res.status, method = method, url = url, body = res.body })
end

--- The coord error for a reply _call accepted (opts.ok) that a caller finds to be an error
--- after all: the same error _call would have returned for it.
function Client:_error(res, method, path)
  return server_error(res, method, self.base .. path)
end

local function use_agent(self, i)
  local a = self.agents[i]
  self.cur, self.base, self.unix_socket, self.limit = i, a.base, a.unix_socket, a.limit
end

-- The Consul backend of coord.pipeline. A call is also its coord.http request (its url set
-- per attempt), with rest (path and query), opts (_call's), sent_token (the token in its
-- headers), and the pipeline's cap, idempotent, retries.
local backend = {
  -- the agent itself is out of reach: the client moves to its next address
  down = { connect = true, resolve = true, closed = true, unknown = true, timeout = true, tls = true },
}

function backend.pick(self)
  return self.agents[self.cur]
end

function backend.request(self, agent, call)
  call.url, call.unix_socket = agent.base .. call.rest, agent.unix_socket
  if self.token ~= call.sent_token and call.opts.token == nil then
    -- the token was rotated since the last attempt
    call.sent_token = self.token
    call.headers = { ["X-Consul-Token"] = self.token or nil, ["Cache-Control"] = call.opts.cache_control }
  end
  return call
end

-- What send returns for a reply whose body pick read: the value and the meta wait in
-- picked_value and picked_meta for classify, which the pipeline calls right after send
-- (nothing runs in between), so a picked reply costs no response table.
local PICKED = {}
local picked_value, picked_meta = nil, nil
local response = http._response

-- One exchange with an agent, holding a permit of its limit (two for a blocking read).
function backend.send(_, agent, req, call)
  local opts = call.opts
  local b <close> = (opts.index or opts.hash) and agent.limit.blocking:acquire() or nil
  local permit <close> = agent.limit.all:_hold()
  local status, raw, body = http._exchange(req) -- (looked up per call: specs count the requests)
  if not status then return nil, raw end
  local pick = opts.pick -- a kv:get's: the entry straight from the text, or nil to decode it
  if pick and status == 200 then
    local picked = pick(body)
    if picked then
      picked_value, picked_meta = picked, meta_of(status, raw, opts.cached)
      return PICKED
    end
  end
  return response(status, raw, body)
end

function backend.classify(_, res, req)
  if res == PICKED then
    local v, m = picked_value, picked_meta
    picked_value, picked_meta = nil, nil
    return m, nil, v
  end
  local opts = req.opts
  if not accepted(opts.ok, res.status) then return server_error(res, req.method, req.url) end
  local raw, body_out = res.body, nil
  if opts.raw or raw == "" then
    body_out = raw ~= "" and raw or nil
  else
    local v, jerr = core.json_decode(raw)
    if v == nil and res.status < 300 then
      return nil, errors.new("protocol", "invalid JSON from Consul: " .. jerr,
        { status = res.status, method = req.method, url = req.url })
    end
    body_out = v == nil and raw or v
  end
  -- the response table itself becomes the result (one table less per call)
  res.body, res.meta = body_out, meta_of(res.status, res.raw_headers, opts.cached)
  return res
end

function backend.failed(self, agent)
  if self.agents[self.cur] == agent then use_agent(self, self.cur % #self.agents + 1) end
end

function backend.succeeded() end

function backend.size(self)
  return #self.agents
end

-- A 403 for a request sent with the client's token: true when the request may be sent again
-- with another token, which is then the client's. That is so when the token was replaced
-- while the request was out (set_token, or another call read the token file), or when the
-- answer is "ACL not found" and the token file now holds another token. A 403 applied
-- nothing, so sending again is safe.
function backend.refresh(self, err, call)
  if err.status ~= 403 or call.opts.token ~= nil then return false end
  local token = call.sent_token
  if self.token ~= token then return true end
  if not self.token_file or err.kind ~= "auth" then return false end
  local t = read_token_file(self.token_file)
  if not t or t == "" or t == token then return false end
  self.token = t
  return true
end

-- A read is tried again when its connection failed or the server said so (429, 500, 503).
function backend.transient(_, err, call)
  if not call.idempotent then return false end
  local status = err.status
  if status then return status == 429 or status == 500 or status == 503 end
  return err.kind == "connect" or err.kind == "closed"
end

--- Sends one request to the agent through coord.pipeline. path: "/v1/..." (already
--- escaped). opts: query (params: string, number or true), body (a string sent raw, or a
--- table sent as JSON), ok (list of non-2xx statuses to accept), token, dc,
--- consistency/stale/consistent, ns, partition, index/hash + wait (a blocking query: with a
--- per-call timeout the wait is shortened so that the call ends within it; else each attempt
--- may take wait + wait/16 + the client's timeout), timeout (a cap on the whole call), raw
--- (keep the body as a string), retries (default 2 for a GET that does not block, else 0; a
--- write is only retried when it was certainly not sent), pick (function(text) -> a value
--- read from a 200 reply's body, or nil to decode it as usual: when it gives one, _call
--- returns the meta, nil and the value). Returns {status, body, meta} (the coord.http
--- response, its body decoded) or nil, err.
function Client:_call(method, path, opts)
  opts = opts or {}
  local blocking = opts.index or opts.hash
  local wait = opts.wait or (blocking and 300) or nil
  local timeout = opts.timeout
  -- each attempt's (the pipeline gives every attempt what is left of a caller's timeout)
  local attempt = self.timeout
  if wait then
    if timeout then wait = capped_wait(wait, timeout) else attempt = wait + wait / 16 + self.timeout end
  end
  -- (a plain read of a client without dc, ns, partition or consistency has no query)
  local q
  if not (opts.plain and self.plain) then q = build_query(self, method, opts, wait) end
  local body = opts.body
  if type(body) == "table" then body = core.json_encode(body) end
  local token = opts.token
  if token == nil then token = self.token end
  local headers
  if token and token ~= "" then headers = { ["X-Consul-Token"] = token } end
  local cc = opts.cache_control
  if cc then
    headers = headers or {}
    headers["Cache-Control"] = cc
  end
  local get = method == "GET"
  -- eight fields, the table's size; the others only when they are set
  local call = {
    method = method, url = false, timeout = attempt, rest = q and path .. "?" .. table.concat(q, "&") or path,
    opts = opts, cap = timeout, idempotent = get, retries = opts.retries or ((get and not blocking) and 2 or 0),
  }
  if body ~= nil then call.body = body end
  if self.tls then call.tls = self.tls end
  if headers then call.headers = headers end
  if token ~= nil then call.sent_token = token end
  return pipeline.run(backend, self, call)
end

-- The options every call accepts, with the type each must have.
local call_option_types = {
  token = "string", dc = "string", consistency = "string", stale = "boolean", consistent = "boolean",
  ns = "string", partition = "string", index = "integer", hash = "string", wait = "number",
  timeout = "number", retries = "integer",
}

-- Copies the options every call accepts (token, dc, consistency, ns, partition, blocking,
-- timeout) from a user's opts into a _call opts table with the given query, checking their
-- types. For the API modules, not a public API.
function M._call_opts(opts, query, fname)
  for name, want in pairs(call_option_types) do
    if opts[name] ~= nil then args.option(opts, name, want, fname) end
  end
  return {
    query = query, token = opts.token, dc = opts.dc, consistency = opts.consistency,
    stale = opts.stale, consistent = opts.consistent, ns = opts.ns, partition = opts.partition,
    index = opts.index, hash = opts.hash, wait = opts.wait, timeout = opts.timeout, retries = opts.retries,
  }
end
local call_opts = M._call_opts

-- Adds the agent cache options of a user's opts to o (a _call opts table), for the reads
-- the agent caches: cached (send ?cached), max_age and stale_if_error (seconds, sent as
-- Cache-Control in whole seconds; they need cached). Returns o.
local function cache_opts(o, opts)
  local cached, max_age, stale_if_error = opts.cached, opts.max_age, opts.stale_if_error
  if cached == nil and max_age == nil and stale_if_error == nil then return o end
  args.option(opts, "cached", "boolean")
  args.option(opts, "max_age", "number")
  args.option(opts, "stale_if_error", "number")
  local cc = {}
  for _, d in ipairs { { "max-age", max_age, "max_age" }, { "stale-if-error", stale_if_error, "stale_if_error" } } do
    if d[2] ~= nil then
      if not (d[2] >= 0 and d[2] < 2 ^ 31) then error("bad option '" .. d[3] .. "' (seconds, 0 or more, expected)", 3) end
      if not cached then error("bad option '" .. d[3] .. "' (needs cached = true)", 3) end
      cc[#cc + 1] = d[1] .. "=" .. math.floor(d[2])
    end
  end
  o.cached = cached or nil
  o.cache_control = cc[1] and table.concat(cc, ", ") or nil
  return o
end

-- A query table of the fields of opts named in names (a list). For the API modules.
function M._pick(opts, names)
  local q = {}
  for _, k in ipairs(names) do q[k] = opts[k] end
  return q
end

-- GET path in the 0.2 convention: the decoded body, nil and the meta (nil, nil, meta for a
-- status listed in ok: absent); or nil and an error. cache: the endpoint is one the agent
-- caches (opts may hold cache_opts' options).
function Client:_read(path, opts, query, ok, cache)
  local o = call_opts(opts or {}, query)
  o.ok = ok
  if cache then cache_opts(o, opts) end
  local res, err = self:_call("GET", path, o)
  if not res then return nil, err end
  if res.status >= 300 then return nil, nil, res.meta end
  return res.body, nil, res.meta
end

-- A write (PUT unless method is given) in the 0.2 convention: the decoded body (true when
-- empty), nil and the meta; or nil and an error.
function Client:_write(path, body, opts, query, method)
  local o = call_opts(opts or {}, query)
  o.body = body
  local res, err = self:_call(method or "PUT", path, o)
  if not res then return nil, err end
  if res.body == nil then return true, nil, res.meta end
  return res.body, nil, res.meta
end

-- A JSON null or absent field read as nil. For the API modules.
function M._value(v)
  if v == core.null then return nil end
  return v
end

local request_option_types = { method = "string", path = "string", query = "table", raw = "boolean" }

--- Any Consul HTTP endpoint, through the same pipeline as every call (failover, retries of
--- reads, token rotation, connection limits, error kinds). req: method ("GET"), path
--- ("/v1/...", used as it is: escape what goes in it), query ({name = string, number or
--- true}), body (a string sent as it is, or a table sent as JSON), raw (keep the reply body
--- a string), and the options every call takes (token, dc, consistency, stale, consistent,
--- ns, partition, index, hash, wait, timeout, retries). Returns the decoded body (true when
--- the reply is empty), nil and the meta; or nil and an error for a failure or a non-2xx
--- reply (err.kind from the status, err.status, err.message: Consul's text).
function Client:request(req)
  args.check(req, "table", 1, "request")
  for name, want in pairs(request_option_types) do args.option(req, name, want, "request") end
  local path = req.path
  if path == nil or path:sub(1, 1) ~= "/" then
    error("bad option 'path' to 'request' (a path starting with '/' expected, got " .. tostring(path) .. ")", 2)
  end
  local body = req.body
  if body ~= nil and type(body) ~= "string" and type(body) ~= "table" then
    error("bad option 'body' to 'request' (string or table expected, got " .. type(body) .. ")", 2)
  end
  local method = req.method and req.method:upper() or "GET"
  local o = call_opts(req, req.query, "request")
  o.body, o.raw = body, req.raw
  local res, err = self:_call(method, path, o)
  if not res then return nil, err end
  if res.body == nil then return true, nil, res.meta end
  return res.body, nil, res.meta
end

---------------------------------------------------------------------------------------------
-- recipes in other modules

--- A held lock on key (see coord.consul.lock).
function Client:lock(key, opts)
  return require("coord.consul.lock").lock(self, key, opts)
end

--- A semaphore of `limit` holders under prefix (see coord.consul.semaphore).
function Client:semaphore(prefix, limit, opts)
  return require("coord.consul.semaphore").new(self, prefix, limit, opts)
end

--- Leader election on key (see coord.consul.lock).
function Client:election(key, opts)
  return require("coord.consul.lock").election(self, key, opts)
end

--- A watch over any blocking read: fn(opts) is called with index/hash/wait added to opts and
--- returns value, err, meta (see coord.consul.watch).
function Client:watch(fn, opts)
  return require("coord.consul.watch").new(self, fn, opts)
end

--- The instances of a service (plain tables), the current list first and then each change,
--- from one blocking health query shared by identical watches (see coord.consul.discovery).
function Client:services_watch(service, opts)
  return require("coord.consul.discovery").watch(self, service, opts)
end

args.methods(Client)
M.Client = Client
return M
