-- coord.http: the HTTP client the Consul and etcd clients are built on. Every call suspends
-- the calling coroutine until the reply is complete (or runs the loop when called outside one).

local core = require "coord.core"
local sched = require "coord.sched"
local errors = require "coord.errors"

local M = {}

local wait, waiter = sched.wait, sched.Waiter
local request, parse_headers, header = core.request, core.parse_headers, core.header

-- A response keeps its header block raw; `res.headers` builds the table on first use, and
-- `res:header(name)` reads one header without building it.
local Response = { __name = "coord.http.response" }
function Response.__index(res, k)
  if k == "headers" then
    local h = parse_headers(res.raw_headers)
    rawset(res, "headers", h)
    return h
  end
  return Response[k]
end

--- The value of one response header (any case), repeated values joined with ", "; or nil.
function Response:header(name)
  return header(self.raw_headers, name)
end

-- A plain request's owner is its waiter: the poll hands it back when the reply is complete.
local function cancel_request(w)
  if not w.done then w.ud:cancel() end
end

-- The method a request is sent with, as the C core chooses it when opts.method is absent.
local function method_of(opts)
  return opts.method or ((opts.body or opts.upload) and "POST" or "GET")
end

-- The error of a failed transfer. maybe_applied: the request may have reached the server
-- (cause: the transport kind, when the kind became "unknown" because of that).
local function fail(kind, message, opts, maybe_applied, cause)
  return nil, errors.new(kind, message, { method = method_of(opts), url = opts.url,
    maybe_applied = maybe_applied or nil, cause = cause })
end

local function expected(expect, status)
  if type(expect) == "number" then return status == expect end
  for i = 1, #expect do
    if expect[i] == status then return true end
  end
  return false
end

local function http_error(res, opts)
  local body = res.body or ""
  local snippet = #body > 200 and body:sub(1, 200) .. "..." or body
  return nil, errors.new("http", ("unexpected HTTP status %d%s"):format(res.status, snippet ~= "" and ": " .. snippet or ""), {
    status = res.status, body = body, headers = res.headers,
    method = method_of(opts), url = opts.url })
end

--- Sends one request and returns a response {status, headers, body}, or nil and an error.
--- opts: url (required), method, headers, body, timeout (30 s; 0 = none), connect_timeout
--- (10 s), tls = {ca_file, ca_path, cert_file, key_file, key_password, verify = true,
--- verify_host}, unix_socket, connect_to (list of "HOST:PORT:TO-HOST:TO-PORT"), http_version ("1.1", "2", "2tls", ...), pipewait, max_body,
--- address_scope (an IPv6 scope id; requests with different ones never share a connection;
--- a pipewait request without one that times out before any reply moves its origin's later
--- ones to a new connection),
--- expect (a status or list of statuses; any other is an "http" error), resend (libcurl may
--- send the request again when a reused connection died before any reply; default true
--- for GET and HEAD only).
-- Waiters of finished plain requests, each with its request object (w.ud), for the next
-- requests: a request whose results were taken is on none of the loop's lists and nothing
-- else refers to either, so both carry the next request instead of being made anew. A wait
-- that ended another way (its coroutine closed, the request canceled) is not kept.
local spare, nspare = {}, 0
local SPARE_MAX = 64

-- Connection groups. libcurl 8.14 makes a transfer with CURLOPT_PIPEWAIT wait, with no
-- timeout, for an idle HTTP/2 connection to its host that has not seen a reply yet, and
-- nothing ends that wait: no transfer reads the idle connection. A pipewait request that timed
-- out before any reply leaves exactly such a connection (its server just started, stopped or
-- overloaded), after which every later pipewait request to that origin waited for ever (the
-- watchdog of csrc/watchdog.c now ends each by its timeout, but they would all still fail).
-- So such a timeout, or a stream closed after a second or more with no answer (the etcd
-- watch hub closes one whose creates got none), moves the origin's later pipewait requests
-- to a new connection group: a new address_scope, which is part of the key libcurl groups
-- connections by and does nothing else for an IPv4 address or a host name. Requests that set address_scope themselves, and
-- URLs with an IPv6 zone (which need theirs), keep libcurl's grouping. The connection left
-- behind is closed by libcurl once idle for its maximum age; streams already on it go on.
local groups, moved = {}, false -- origin -> its group (absent: 0); moved: any group is not 0
local GROUP_BASE = 0x10000 -- above the scopes coord uses elsewhere (the watch hub's 1)

local function groupable(opts)
  local url = opts.url
  return opts.pipewait and opts.address_scope == nil and type(url) == "string" and not url:find("%", 1, true)
end

-- What libcurl's connection key holds besides the scope: scheme, host, port, socket, redirect.
local function origin(opts)
  local o = opts.url:match("^[^:/?#]*://[^/?#]*") or opts.url
  local us, ct = opts.unix_socket, opts.connect_to
  if us or ct then
    o = o .. "|" .. tostring(us) .. "|" .. (type(ct) == "table" and table.concat(ct, ",") or "")
  end
  return o
end

-- The origin a request is grouped by, or nil for a request not grouped.
local function group_key(opts)
  return groupable(opts) and origin(opts) or nil
end

-- The address_scope of an origin's group; nil for group 0.
local function group_scope(key)
  local g = key and groups[key]
  return g and GROUP_BASE + g
end

-- A grouped request sent with scope ended before its reply's headers (timed out, perhaps
-- parked, or a stream given up on): unless its origin moved on since (one of many requests
-- that ended together), move it to the next group.
local function left_unanswered(key, scope)
  if not key then return end
  local g = groups[key] or 0
  if (scope and scope - GROUP_BASE or 0) == g then
    groups[key], moved = (g + 1) % 0x10000, true
  end
end

local function copy(t)
  local o = {}
  for k, v in pairs(t) do o[k] = v end
  return o
end

-- The exchange of M.request without its Response table: status, raw header block, body; or
-- nil, err. For the clients' hot paths, which may read the reply without one (opts: a table).
local function exchange(opts)
  local w
  if nspare > 0 then
    w = spare[nspare]
    spare[nspare], nspare = nil, nspare - 1
    w.done, w.taken = false, false
  else
    -- every field a wait sets is created here, so the table is sized once
    w = setmetatable({ cancel = cancel_request, ud = false, co = false, done = false, taken = false }, waiter)
  end
  local scope = moved and group_scope(group_key(opts))
  local o = opts
  if scope then
    o = copy(opts) -- (a caller's table, a constant perhaps, is never changed)
    o.address_scope = scope
  end
  w.ud = request(o, w, w.ud or nil)
  wait(w)
  local status, raw, body, maybe_applied, cause = w.ud:result()
  if not status and (raw == "timeout" or cause == "timeout") then left_unanswered(group_key(opts), scope or nil) end
  if nspare < SPARE_MAX then
    w.co, w.a, w.b = false, nil, nil -- a spare keeps no coroutine alive
    nspare = nspare + 1
    spare[nspare] = w
  end
  if not status then return fail(raw, body, opts, maybe_applied, cause) end
  return status, raw, body
end
M._exchange = exchange

--- (internal) The response request returns for what _exchange returned.
function M._response(status, raw, body)
  return setmetatable({ status = status, raw_headers = raw, body = body }, Response)
end

function M.request(opts)
  if type(opts) ~= "table" then
    error("bad argument #1 to 'request' (table expected, got " .. type(opts) .. ")", 2)
  end
  local status, raw, body = exchange(opts)
  if not status then return nil, raw end
  local res = setmetatable({ status = status, raw_headers = raw, body = body }, Response)
  if opts.expect and not expected(opts.expect, status) then return http_error(res, opts) end
  return res
end

local function with(opts, method, url, body)
  if type(url) ~= "string" then
    error("bad argument #1 to '" .. method:lower() .. "' (string expected, got " .. type(url) .. ")", 3)
  end
  if opts and type(opts) ~= "table" then
    error("bad argument #" .. (body and 3 or 2) .. " to '" .. method:lower() .. "' (table or nil expected, got " .. type(opts) .. ")", 3)
  end
  local o = opts and copy(opts) or {}
  o.method, o.url, o.body = method, url, body
  return o
end

--- GET url; same options and results as request.
function M.get(url, opts)
  return M.request(with(opts, "GET", url))
end

--- POST body to url; same options and results as request.
function M.post(url, body, opts)
  if type(body) ~= "string" then
    error("bad argument #2 to 'post' (string expected, got " .. type(body) .. ")", 2)
  end
  return M.request(with(opts, "POST", url, body))
end

---------------------------------------------------------------------------------------------
-- streams

local Stream = { __name = "coord.http.stream" }
Stream.__index = Stream

-- A reader closed while waiting only stops waiting; the stream stays open.
local function cancel_read(w)
  if w.s.w == w then w.s.w = nil end
end

local function await(self)
  local w = setmetatable({ cancel = cancel_read, s = self }, waiter)
  self.w = w
  wait(w)
end

--- Starts a long-lived request whose reply is read as it arrives. Takes request's options
--- plus upload = true (the body is written over time with :write and ended with :finish)
--- and buffer (bytes read ahead before the transfer is paused, default 1 MiB). Returns the
--- stream at once; failures to connect show up on the first read.
function M.stream(opts)
  if type(opts) ~= "table" then
    error("bad argument #1 to 'stream' (table expected, got " .. type(opts) .. ")", 2)
  end
  local o = copy(opts)
  o.stream = true
  local key = group_key(o)
  local scope = group_scope(key)
  if scope then o.address_scope = scope end
  local self = setmetatable({ stream = true, method = method_of(o), url = o.url, group = key, scope = scope,
    opened = core.now() }, Stream)
  self.ud = request(o, self)
  return self
end

function Stream:_fail(kind, message, maybe_applied, cause)
  if not self.status and (kind == "timeout" or cause == "timeout") then left_unanswered(self.group, self.scope) end
  local e = errors.new(kind, message, { method = self.method, url = self.url,
    maybe_applied = maybe_applied or nil, cause = cause })
  self.error = e
  return nil, e
end

--- Waits for the status line and headers: returns status, headers or nil, err.
function Stream:response()
  while true do
    local status, headers, message, maybe_applied, cause = self.ud:response()
    if status then
      self.status, self.headers = status, headers
      return status, headers
    end
    if status == nil then return self:_fail(headers, message, maybe_applied, cause) end
    await(self)
  end
end

local function reader(method)
  return function(self)
    while true do
      local data, kind, message, maybe_applied, cause = self.ud[method](self.ud)
      if data then return data end
      if data == nil then
        if kind == "eof" then return nil end
        return self:_fail(kind, message, maybe_applied, cause)
      end
      await(self)
    end
  end
end

--- The next line (without "\n" or "\r\n"); nil at the end; nil, err on failure.
Stream.read_line = reader("read_line")
--- Whatever bytes have arrived (at least one); nil at the end; nil, err on failure.
Stream.read = reader("read")

--- Iterates over lines until the end; a failure ends the loop and is left in stream.error.
function Stream:lines()
  return function()
    return (self:read_line())
  end
end

--- Sends more of an upload stream's body. Returns true, or nil and a "closed" error.
function Stream:write(data)
  if type(data) ~= "string" then
    error("bad argument #1 to 'write' (string expected, got " .. type(data) .. ")", 2)
  end
  if self.ud:write(data) then return true end
  return self:_fail("closed", "stream is closed")
end

--- Ends an upload stream's body.
function Stream:finish()
  self.ud:finish()
end

--- A finished stream's raw header block: its headers, then the trailers that came after its
--- body (gRPC's grpc-status). nil while the stream is still going or after a failure.
function Stream:trailers()
  if self.raw_trailers == nil and self.ud:stats().done then
    local status, raw = self.ud:result()
    self.raw_trailers = status and raw or false
  end
  return self.raw_trailers or nil
end

--- Byte counts and pause statistics, for monitoring backpressure.
function Stream:stats()
  return self.ud:stats()
end

--- Abandons the stream: the connection is closed; readers get a "canceled" error.
function Stream:close()
  local ud = self.ud
  -- one given up on after a second or more without an answer (as the etcd watch hub does
  -- with a stream whose creates got none) may sit on a connection that never answers
  if self.group and not self.status and not self.closed and core.now() - self.opened > 1 then
    local st = ud:stats()
    if not st.answered and not st.done then left_unanswered(self.group, self.scope) end
  end
  self.closed = true
  ud:cancel()
  local w = self.w
  if w then
    self.w = nil
    sched.wake(w)
  end
end
Stream.__close = Stream.close

return M
