-- spec/etcd_watch_support.lua: helpers for the watch specs: a client for a test server, raw
-- writes through the gateway, an etcd with auth and a restricted user, and counting a
-- process's TCP connections to a port.

local coord = require "coord"
local core = require "coord.core"
local servers = require "servers"
local http = coord.http

local M = {}

local b64 = core.b64encode

--- A coord.etcd client for server srv (opts are merged into the client's options), on the
--- run's transport (spec/etcd_client.lua).
function M.client(srv, opts)
  local o = { endpoints = srv.endpoints, tls = srv:client_tls(), timeout = 10 }
  for k, v in pairs(opts or {}) do o[k] = v end
  return require("etcd_client").new(o)
end

--- POSTs a JSON body to the gateway path on srv's first member (or `url`); returns the
--- decoded reply (asserting a 200).
function M.call(srv, path, body, url, token)
  local res = assert(http.post((url or srv.endpoint) .. path, core.json_encode(body),
    { tls = srv:client_tls(), timeout = 10, headers = token and { Authorization = token } or nil,
      http_version = not srv.certs and "1.1" or nil })) -- as servers.lua's gateway()
  assert(res.status == 200, path .. ": " .. res.status .. " " .. res.body)
  return assert(core.json_decode(res.body))
end

--- Puts key = value; returns the revision.
function M.put(srv, key, value, url, token)
  local j = M.call(srv, "/v3/kv/put", { key = b64(key), value = b64(value) }, url, token)
  return assert(core.i64(j.header.revision))
end

function M.delete(srv, key)
  local j = M.call(srv, "/v3/kv/deleterange", { key = b64(key) })
  return assert(core.i64(j.header.revision))
end

--- A txn that puts every {key, value} of kvs in one revision; returns the revision.
function M.put_many(srv, kvs)
  local ops = {}
  for i, kv in ipairs(kvs) do ops[i] = { request_put = { key = b64(kv[1]), value = b64(kv[2]) } } end
  local j = M.call(srv, "/v3/kv/txn", { success = ops })
  return assert(core.i64(j.header.revision))
end

--- The number of watch streams member i (default 1) of srv serves to all its clients, read
--- from its /metrics (etcd_debugging_mvcc_watch_stream_total, in 3.4 and 3.5): how a spec sees
--- a gRPC watch stream end on a connection that stays open for the calls.
--- An etcd (version) with auth on (tokens of 2 s) and a user alice (password alicepw) who may
--- read only the prefix open/: the watch specs' auth fixture.
function M.auth_server(version)
  local srv = servers.etcd { version = version, auth = true, auth_token_ttl = 2 }
  for _, cmd in ipairs { "user add alice --new-user-password=alicepw", "role add reader",
    "role grant-permission reader read open/ --prefix=true", "user grant-role alice reader" } do
    local ok, out = srv:ctl(cmd)
    assert(ok, out)
  end
  return srv
end

function M.watch_streams(srv, i)
  local m = srv.members[i or 1]
  local url = (m and m.url or srv.endpoint) .. "/metrics"
  local res = assert(http.get(url, { tls = srv:client_tls(), timeout = 10,
    http_version = not srv.certs and "1.1" or nil })) -- as M.call
  assert(res.status == 200, "/metrics: " .. res.status)
  local n = res.body:match("\netcd_debugging_mvcc_watch_stream_total (%d+)")
  return assert(tonumber(n), "no etcd_debugging_mvcc_watch_stream_total in /metrics")
end

--- The number of established TCP connections this process holds to `port`.
function M.connections(port)
  local p = assert(io.popen("ASAN_OPTIONS=detect_leaks=0 ss -Htnp state established '( dport = :" .. port .. " )' 2>/dev/null"))
  local n, me = 0, "pid=" .. M.pid() .. ","
  for line in p:lines() do
    if line:find(me, 1, true) then n = n + 1 end
  end
  p:close()
  return n
end

local pid
function M.pid()
  if not pid then
    local f = assert(io.open("/proc/self/stat"))
    pid = f:read("a"):match("^(%d+)")
    f:close()
  end
  return pid
end

--- Reads n events from w (bounded by `limit` seconds); returns the list and the error, if any.
function M.take(w, n, limit)
  local out = {}
  local ok, err = coord.timeout(limit or 10, function()
    while #out < n do
      local ev, e = w:next()
      if not ev then return nil, e end
      out[#out + 1] = ev
    end
    return true
  end)
  return out, not ok and err or nil
end

return M
