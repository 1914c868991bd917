-- bench/writer.lua: writes the keys the watch benchmarks watch, from a process of its own.
--
--   lua5.4 writer.lua etcd|consul BASE-URL W C VALUE
--
-- Writes VALUE to the keys bw/000001 ... bw/<W>, C at a time, with coord.http alone (no client
-- module), so that its connections and CPU are not counted as the watching client's. For etcd,
-- BENCH_TLS_DIR names a folder with ca.pem, client.pem and client.key for mutual TLS.
-- Prints "writes=<n> errors=<e> seconds=<wall>"; exits 1 when a write failed.
local coord = require "coord"
local core = require "coord.core"
package.path = (arg[0]:match("^(.*)[/\\]") or ".") .. "/?.lua;" .. package.path
local common = require "common"

local kind, base, w, conc, value = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4]), arg[5]
assert((kind == "etcd" or kind == "consul") and base and w and conc and value,
  "usage: writer.lua etcd|consul BASE-URL W C VALUE")

local tls = common.tls_from_env()

local function request(i)
  local key = common.key(i)
  if kind == "etcd" then
    return coord.http.request { url = base .. "/v3/kv/put", tls = tls, expect = 200, timeout = 30,
      body = core.json_encode { key = core.b64encode(key), value = core.b64encode(value) } }
  end
  local res, err = coord.http.request { url = base .. "/v1/kv/" .. key, method = "PUT", body = value,
    expect = 200, timeout = 30 }
  if res and not res.body:match("^%s*true%s*$") then return nil, "PUT answered " .. res.body end
  return res, err
end

local t0 = coord.now()
local done, errors, first_err = common.pool(w, conc, request)
if first_err then io.stderr:write("first error: ", tostring(first_err), "\n") end
print(("writes=%d errors=%d seconds=%.3f"):format(done, errors, coord.now() - t0))
os.exit(errors == 0 and 0 or 1)
