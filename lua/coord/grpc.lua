-- coord.grpc: unary gRPC calls over coord.http on HTTP/2 (h2c with prior knowledge on http://,
-- ALPN h2 on https://). Knows gRPC's framing and status, nothing about any service.

local http = require "coord.http"
local core = require "coord.core"
local errors = require "coord.errors"

local M = {}

local spack, sunpack, char = string.pack, string.unpack, string.char

--- The HTTP status a grpc-gateway answers for each gRPC status code, so a gRPC failure can be
--- classified as the same failure seen through a JSON gateway would be.
M.http_status = { [1] = 408, [2] = 500, [3] = 400, [4] = 504, [5] = 404, [6] = 409, [7] = 403,
  [8] = 429, [9] = 400, [10] = 409, [11] = 400, [12] = 501, [13] = 500, [14] = 503, [15] = 500, [16] = 401 }

--- One message in gRPC's length-prefixed framing: flag 0 (not compressed), 4-byte big-endian length.
function M.frame(msg)
  return spack(">Bs4", 0, msg)
end

--- The message of a unary reply body: exactly one uncompressed frame. Or nil and why.
function M.unframe(body)
  if #body < 5 then return nil, "reply of " .. #body .. " bytes is shorter than a gRPC frame header" end
  local flag, len = sunpack(">BI4", body)
  if flag ~= 0 then return nil, "compressed or unknown frame flag " .. flag end
  if #body ~= 5 + len then
    return nil, ("frame says %d bytes, reply has %d after the header"):format(len, #body - 5)
  end
  return body:sub(6)
end

-- grpc-message is percent-encoded (gRPC's HTTP/2 protocol spec); bad escapes stay as they are.
local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end
M._unescape = unescape

-- grpc-timeout: at most 8 digits and a unit; milliseconds, or seconds past 8 digits of them.
local function timeout_header(seconds)
  local ms = math.ceil(seconds * 1000)
  if ms < 1 then ms = 1 end
  if ms <= 99999999 then return ms .. "m" end
  return math.min(math.ceil(seconds), 99999999) .. "S"
end
M._timeout_header = timeout_header

-- libcurl 8 reports a request it sent on a pooled HTTP/2 connection that the server had
-- closed meanwhile (a killed member) as an error of the HTTP/2 framing layer. Over HTTP/1.1
-- the same is a closed connection, and libcurl sends the request again on a new one. So here
-- too: a call that may be repeated is sent once more (the dead connection is gone by then),
-- and one that may not is "unknown" with the cause "closed".
local function broken(err)
  local kind = err.kind == "unknown" and err.cause or err.kind
  return kind == "protocol" and err.maybe_applied and err.message:find("HTTP2 framing layer", 1, true) ~= nil
end

-- libcurl 8.14 also takes an idle pooled HTTP/2 connection whose server died (killed, not
-- stopped: no GOAWAY) for alive, so the first write after a member's crash and restart would
-- go out on it and fail as "unknown". So a call that may not be repeated, to a target with no
-- reply for M.idle seconds (1), is preceded by a probe: a call safe to repeat, of a method
-- that need not exist (any gRPC answer, even "unimplemented", shows the connection works). A
-- probe that finds the connection dead is sent again as reads are, on a new connection, which
-- the call then takes. Its own outcome is otherwise ignored: the call reports its own.
M.idle = 1
local PROBE = "/grpc.health.v1.Health/Check"
local now = core.now
local last_reply = {} -- pool key (one per target) -> time of the last reply

local function pool_key(target)
  return target.url .. "|" .. tostring(target.unix_socket) .. "|" .. tostring(target.connect_to)
end

--- Forgets the last reply from target, so that the next call that may not be repeated, or
--- the next stream, is preceded by a probe: for a caller that found a connection to it
--- silent (a watch stream with its probes unanswered), as a failed call or stream does.
function M.suspect(target)
  last_reply[pool_key(target)] = nil
end

local function probe(target, req, timeout)
  local key = pool_key(target)
  local p = { url = target.url .. PROBE, method = "POST", body = M.frame(""),
    headers = { "Content-Type: application/grpc", "TE: trailers" }, timeout = timeout, tls = req.tls,
    unix_socket = req.unix_socket, connect_to = req.connect_to, http_version = req.http_version,
    pipewait = true, resend = true } -- (pipewait: after a timeout, coord.http moves it on)
  local res, err = http.request(p)
  if not res and broken(err) then res, err = http.request(p) end
  if res then last_reply[key] = now() end
end

local function protocol(message, fields)
  return nil, errors.new("protocol", message, fields)
end

-- What calls to one target table reuse instead of making again per call: its pool key, the
-- URL of each method, and the header list of each timeout (for one metadata table: another
-- starts anew). Weakly keyed by the target, and made anew when its url, unix_socket or
-- connect_to changed. A header list used again is also the same table for coord.http, whose
-- C side then reuses the curl list it made from it (csrc/hdrlist.c).
local memos = setmetatable({}, { __mode = "k" })
local MEMO_HEADERS = 16 -- timeouts kept per target (a deadline's remaining time varies)

local function memo_of(target, md)
  local m = memos[target]
  if not m or m.md ~= md or m.url ~= target.url or m.unix_socket ~= target.unix_socket
    or m.connect_to ~= target.connect_to then
    m = { md = md, url = target.url, unix_socket = target.unix_socket, connect_to = target.connect_to,
      key = pool_key(target), urls = {}, headers = {}, nheaders = 0 }
    memos[target] = m
  end
  return m
end

-- The request headers of a call: gRPC's, grpc-timeout when timeout > 0, then the metadata.
-- A stream (upload) also sends "Expect:", which keeps libcurl from waiting for a 100 Continue
-- before its first message.
local function call_headers(timeout, md, upload)
  local headers = { "Content-Type: application/grpc", "TE: trailers", upload and "Expect:" or nil }
  if timeout and timeout > 0 then headers[#headers + 1] = "grpc-timeout: " .. timeout_header(timeout) end
  if md then
    for k, v in pairs(md) do
      headers[#headers + 1] = type(k) == "string" and (k .. ": " .. v) or v
    end
  end
  return headers
end

-- The header list of a call with timeout and metadata md, from memo m.
local function memo_headers(m, timeout, md)
  local h = m.headers[timeout]
  if h then return h end
  h = call_headers(timeout, md)
  if m.nheaders >= MEMO_HEADERS then m.headers, m.nheaders = {}, 0 end
  m.headers[timeout], m.nheaders = h, m.nheaders + 1
  return h
end

--- Calls method ("/pkg.Service/Method") on target with the request message bytes. target:
--- url (http:// or https:// base), tls, unix_socket, connect_to (as coord.http). opts: timeout
--- (seconds, default 30; sent as grpc-timeout too), metadata (a table name -> string value, or
--- a list of "name: value"), resend (as coord.http's: only for calls safe to repeat). Returns the
--- reply message bytes, or nil and an error: a transport failure as coord.http gives it, kind
--- "grpc" for a non-OK status (fields code, the gRPC status code, and grpc_message),
--- "protocol" for a reply that is not well-formed gRPC. A caller that calls the same target
--- often passes the same target and metadata tables each time, and changes neither: what
--- coord makes of them is kept with the target.
function M.call(target, method, msg, opts)
  opts = opts or {}
  local timeout = opts.timeout or 30
  local md = opts.metadata
  local m = memo_of(target, md)
  local url = m.urls[method]
  if not url then
    url = target.url .. method
    m.urls[method] = url
  end
  local req = {
    url = url, method = "POST", body = M.frame(msg), headers = memo_headers(m, timeout, md), timeout = timeout,
    tls = target.tls, unix_socket = target.unix_socket, connect_to = target.connect_to,
    -- prior knowledge on https:// too: libcurl still negotiates h2 by ALPN, but never puts the
    -- call on a pooled HTTP/1.1 connection to the host, as "2tls" would (etcd's gateway, not
    -- its gRPC server, answers there: 404)
    http_version = "2-prior-knowledge", pipewait = true,
    resend = opts.resend,
  }
  local key = m.key
  if not opts.resend and now() - (last_reply[key] or -math.huge) > M.idle then
    local t0 = now()
    probe(target, req, math.min(timeout / 2, 1))
    req.timeout = math.max(timeout - (now() - t0), 0.001)
  end
  -- (coord.http's exchange without its response table, looked up per call: specs count calls)
  local hstatus, raw, body = http._exchange(req)
  if not hstatus and broken(raw) then
    if opts.resend then
      hstatus, raw, body = http._exchange(req)
    elseif raw.kind == "unknown" then
      raw.cause = "closed"
    end
  end
  if not hstatus then
    -- a reply not long ago does not vouch for the connection any more
    last_reply[key] = nil
    return nil, raw
  end
  last_reply[key] = now()
  if hstatus ~= 200 then
    return protocol("gRPC call answered with HTTP status " .. hstatus, { status = hstatus, url = url })
  end
  -- a reply's trailers reach the header block after the body; a trailers-only reply has
  -- them in its headers: either way they are in the one raw block
  local status, message = core.header(raw, "grpc-status", "grpc-message")
  local code = status and math.tointeger(tonumber(status))
  if not code then
    return protocol("gRPC reply without a valid grpc-status (" .. tostring(status) .. ")", { status = hstatus, url = url })
  end
  if code ~= 0 then
    message = message and unescape(message) or ("gRPC status " .. code)
    return nil, errors.new("grpc", message, { code = code, grpc_message = message, url = url })
  end
  local reply, why = M.unframe(body)
  if not reply then return protocol("malformed gRPC reply: " .. why, { status = hstatus, url = url }) end
  return reply
end

---------------------------------------------------------------------------------------------
-- bidirectional streams

local Stream = { __name = "coord.grpc.stream" }
Stream.__index = Stream

--- Probes the connection to target as M.open does first: a call of its own (at most 1 s)
--- whose outcome is ignored, made so that a dead pooled connection is found and replaced
--- before a stream goes on it. For a caller that must open its stream without waiting.
function M._probe(target)
  probe(target, { tls = target.tls, unix_socket = target.unix_socket, connect_to = target.connect_to,
    http_version = "2-prior-knowledge" }, 1)
end

--- Opens a bidirectional stream to method on target (as call's). opts: metadata (as call's),
--- timeout (seconds for the whole stream, also sent as grpc-timeout; default none: a
--- long-lived stream), buffer (read-ahead bytes, as coord.http.stream's), probe (false: the
--- caller has just called M._probe, so open does not wait). Returns the stream at once after
--- the probe; a failure to connect shows on the first recv.
function M.open(target, method, opts)
  opts = opts or {}
  local url = target.url .. method
  -- a stream opened on a pooled connection whose server died would only go silent (its
  -- requests go nowhere, no error comes, and no deadline ends a long-lived stream): probe
  -- first, always, not only an idle target as M.call does writes: a member killed and
  -- restarted within M.idle of the last reply (as the specs do) left the connection dead
  if opts.probe ~= false then M._probe(target) end
  local s = http.stream {
    url = url, method = "POST", upload = true, headers = call_headers(opts.timeout, opts.metadata, true),
    timeout = opts.timeout, buffer = opts.buffer,
    tls = target.tls, unix_socket = target.unix_socket, connect_to = target.connect_to,
    http_version = "2-prior-knowledge", pipewait = true, -- HTTP/2 only, as call's
  }
  return setmetatable({ s = s, url = url, buf = "", pos = 1, target = target }, Stream)
end

function Stream:_fail(err)
  self.err = err
  if err.kind ~= "grpc" and err.kind ~= "protocol" then M.suspect(self.target) end
  self.s:close()
  return nil, err
end

--- Sends one message (its bytes; framed here). Returns true, or nil and a "closed" error.
function Stream:send(msg)
  return self.s:write(spack(">Bs4", 0, msg))
end

--- Ends the sending side: the server sees the end of the requests.
function Stream:close_send()
  self.s:finish()
end

--- Abandons the stream (its reader gets a "canceled" error).
function Stream:close()
  self.s:close()
end
Stream.__close = Stream.close

--- The http stream's statistics; buffered counts the bytes not yet handed out by recv too.
function Stream:stats()
  local st = self.s:stats()
  st.buffered = st.buffered + #self.buf - self.pos + 1
  return st
end

-- The stream has ended cleanly on the wire: its status, from the trailers (or from the
-- headers of a trailers-only reply).
function Stream:_status()
  local raw = self.s:trailers() or ""
  local status, message = core.header(raw, "grpc-status", "grpc-message")
  local code = status and math.tointeger(tonumber(status))
  local fields = { status = self.status, url = self.url }
  if not code then
    return self:_fail(errors.new("protocol", "gRPC stream ended without a valid grpc-status (" .. tostring(status) .. ")",
      fields))
  end
  if code ~= 0 then
    message = message and unescape(message) or ("gRPC status " .. code)
    return self:_fail(errors.new("grpc", message, { code = code, grpc_message = message, url = self.url }))
  end
  self.ended = true
  return nil
end

--- The next message's bytes; nil at a clean end (grpc-status 0); nil and an error: kind
--- "grpc" for a non-OK status (code, grpc_message), "protocol" for bad framing, or a
--- transport failure as coord.http gives it.
function Stream:recv()
  if self.err then return nil, self.err end
  if self.ended then return nil end
  local s = self.s
  if not self.status then
    local status, err = s:response()
    if not status then return self:_fail(err) end
    self.status = status
    if status ~= 200 then
      return self:_fail(errors.new("protocol", "gRPC stream answered with HTTP status " .. status,
        { status = status, url = self.url }))
    end
  end
  while true do
    local buf, pos = self.buf, self.pos
    local avail = #buf - pos + 1
    local need = 5
    if avail >= 5 then
      local flag, len = sunpack(">BI4", buf, pos)
      if flag ~= 0 then
        return self:_fail(errors.new("protocol", "gRPC stream: compressed or unknown frame flag " .. flag,
          { url = self.url }))
      end
      need = 5 + len
      if avail >= need then
        self.pos = pos + need
        return buf:sub(pos + 5, pos + need - 1)
      end
    end
    -- read until `need` bytes are held, joining them once (a large message comes in many reads)
    local parts, have = {}, avail
    if avail > 0 then parts[1] = pos == 1 and buf or buf:sub(pos) end
    repeat
      local data, err = s:read()
      if not data then
        self.buf, self.pos = table.concat(parts), 1
        if err then return self:_fail(err) end
        if have > 0 then
          local why = ("gRPC stream ended inside a frame (%d bytes left)"):format(have)
          return self:_fail(errors.new("protocol", why, { url = self.url }))
        end
        return self:_status()
      end
      parts[#parts + 1] = data
      have = have + #data
    until have >= need
    self.buf, self.pos = table.concat(parts), 1
  end
end

return M
