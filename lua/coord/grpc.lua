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

local function protocol(message, fields)
  return nil, errors.new("protocol", message, fields)
end

--- Calls method ("/pkg.Service/Method") on target with the request message bytes. target:
--- url (http:// or https:// base), tls, unix_socket, connect_to (as coord.http). opts: timeout
--- (seconds, default 30; sent as grpc-timeout too), metadata (a table name -> string value, or
--- a list of "name: value"), resend (as coord.http's: only for calls safe to repeat). Returns the
--- reply message bytes, or nil and an error: a transport failure as coord.http gives it, kind
--- "grpc" for a non-OK status (fields code, the gRPC status code, and grpc_message),
--- "protocol" for a reply that is not well-formed gRPC.
function M.call(target, method, msg, opts)
  opts = opts or {}
  local timeout = opts.timeout or 30
  local headers = { "Content-Type: application/grpc", "TE: trailers" }
  if timeout > 0 then headers[3] = "grpc-timeout: " .. timeout_header(timeout) end
  local md = opts.metadata
  if md then
    for k, v in pairs(md) do
      headers[#headers + 1] = type(k) == "string" and (k .. ": " .. v) or v
    end
  end
  local url = target.url .. method
  local req = {
    url = url, method = "POST", body = M.frame(msg), headers = headers, timeout = timeout,
    tls = target.tls, unix_socket = target.unix_socket, connect_to = target.connect_to,
    -- HTTP/2 only, on https too (ALPN h2): with "2tls", libcurl may send the call on an idle
    -- HTTP/1.1 connection of the same process to that host (a health check), which no gRPC
    -- server answers (etcd's grpc-proxy says 404)
    http_version = "2-prior-knowledge", pipewait = true,
    resend = opts.resend,
  }
  local res, err = http.request(req)
  -- libcurl 8.14.1 reuses an idle HTTP/2 connection whose peer went away without a GOAWAY
  -- (etcd's grpc-proxy exits so on SIGTERM; a killed server does too) and fails the call with
  -- "Error in the HTTP2 framing layer", closing that connection. A call safe to repeat goes
  -- once more, on a new connection; any other keeps the error ("unknown", maybe applied).
  if not res and opts.resend and err.kind == "protocol" and tostring(err.message):find("HTTP2 framing", 1, true) then
    res, err = http.request(req)
  end
  if not res then return nil, err end
  local fields = { status = res.status, url = url }
  if res.status ~= 200 then return protocol("gRPC call answered with HTTP status " .. res.status, fields) end
  -- a reply's trailers reach the header block after the body; a trailers-only reply has
  -- them in its headers: either way they are in the one raw block
  local status, message = core.header(res.raw_headers, "grpc-status", "grpc-message")
  local code = status and math.tointeger(tonumber(status))
  if not code then return protocol("gRPC reply without a valid grpc-status (" .. tostring(status) .. ")", fields) end
  if code ~= 0 then
    message = message and unescape(message) or ("gRPC status " .. code)
    return nil, errors.new("grpc", message, { code = code, grpc_message = message, url = url })
  end
  local reply, why = M.unframe(res.body)
  if not reply then return protocol("malformed gRPC reply: " .. why, fields) end
  return reply
end

---------------------------------------------------------------------------------------------
-- bidirectional streams

local Stream = { __name = "coord.grpc.stream" }
Stream.__index = Stream

-- The request headers of a call: gRPC's, grpc-timeout when timeout > 0, then the metadata.
local function call_headers(timeout, md)
  -- "Expect:" keeps libcurl from waiting for a 100 Continue before the first message
  local headers = { "Content-Type: application/grpc", "TE: trailers", "Expect:" }
  if timeout and timeout > 0 then headers[#headers + 1] = "grpc-timeout: " .. timeout_header(timeout) end
  if md then
    for k, v in pairs(md) do
      headers[#headers + 1] = type(k) == "string" and (k .. ": " .. v) or v
    end
  end
  return headers
end

--- Opens a bidirectional stream to method on target (as call's). opts: metadata (as call's),
--- timeout (seconds for the whole stream, also sent as grpc-timeout; default none: a
--- long-lived stream), buffer (read-ahead bytes, as coord.http.stream's). Returns the stream
--- at once; a failure to connect shows on the first recv.
function M.open(target, method, opts)
  opts = opts or {}
  local url = target.url .. method
  local s = http.stream {
    url = url, method = "POST", upload = true, headers = call_headers(opts.timeout, opts.metadata),
    timeout = opts.timeout, buffer = opts.buffer,
    tls = target.tls, unix_socket = target.unix_socket, connect_to = target.connect_to,
    http_version = "2-prior-knowledge", pipewait = true, -- HTTP/2 only, as call's
  }
  return setmetatable({ s = s, url = url, buf = "", pos = 1 }, Stream)
end

function Stream:_fail(err)
  self.err = err
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
          return self:_fail(errors.new("protocol", ("gRPC stream ended inside a frame (%d bytes left)"):format(have),
            { url = self.url }))
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
