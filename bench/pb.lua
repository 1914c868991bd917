-- bench/pb.lua: client CPU to decode an etcd RangeResponse with 1 and with 100 kvs, protobuf
-- (core.pb_decode, what the gRPC transport will do) against the JSON gateway's equivalent reply
-- (core.json_decode, then the base64 and int64-string conversions coord.etcd.proto does).
-- Prints ns per decode and the ratios. Needs `make build`; runs from any directory:
--   lua5.4 bench/pb.lua [SECONDS_PER_CASE]   (default 0.5; best of 3 runs)
local root = (arg and arg[0] or ""):match("^(.*)/bench/[^/]*$") or "."
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/?.so;" .. package.cpath

local core = require "coord.core"
local proto = require "coord.etcd.proto"
local types = require("coord.etcd.pb_schema").types

local budget = tonumber(arg and arg[1]) or 0.5

-- the same reply in both encodings: keys like bench/key/000042, 100-byte values, revisions
-- of a server that has run a while, one kv in ten on a lease
local function reply(n)
  local kvs, jkvs = {}, {}
  for i = 1, n do
    local kv = { key = ("bench/key/%06d"):format(i), value = ("v"):rep(100), create_revision = 1000000 + i,
      mod_revision = 2000000 + i, version = 1 + i % 7, lease = i % 10 == 0 and 0x694d7a1c5e0b4f11 or 0 }
    kvs[i] = kv
    jkvs[i] = { key = core.b64encode(kv.key), value = core.b64encode(kv.value),
      create_revision = tostring(kv.create_revision), mod_revision = tostring(kv.mod_revision),
      version = tostring(kv.version), lease = kv.lease ~= 0 and tostring(kv.lease) or nil }
  end
  local header = { cluster_id = core.u64("14841639068965178418"), member_id = core.u64("10276657743932975437"),
    revision = 2000000 + n, raft_term = 4 }
  local jheader = { cluster_id = "14841639068965178418", member_id = "10276657743932975437",
    revision = tostring(header.revision), raft_term = "4" }
  return core.pb_encode(types.RangeResponse, { header = header, kvs = kvs, count = n }),
    core.json_encode { header = jheader, kvs = jkvs, count = tostring(n) }
end

-- CPU seconds per call of f(s), best of three runs of about `budget` seconds each
local function per_call(f, s)
  local best = math.huge
  for _ = 1, 3 do
    local iters, t0 = 0, os.clock()
    local elapsed
    repeat
      for _ = 1, 50 do f(s) end
      iters = iters + 50
      elapsed = os.clock() - t0
    until elapsed >= budget
    best = math.min(best, elapsed / iters)
  end
  return best
end

local pb_decode, json_decode, kv, hdr = core.pb_decode, core.json_decode, proto.kv, proto.header

local function pb_only(s) return pb_decode(types.RangeResponse, s) end
-- what the gRPC transport will hand on: the JSON path's kv shape (absent fields as 0 and ""),
-- filled in by the decoder itself
local function pb_full(s)
  local r = pb_decode(types.RangeResponse, s, true)
  return r.kvs or {}, r.header
end
local function json_only(s) return json_decode(s) end
local function json_full(s) -- what coord.etcd does with a gateway reply today
  local r = json_decode(s)
  local out = {}
  for i, k in ipairs(r.kvs or {}) do out[i] = kv(k) end
  return out, hdr(r.header)
end

print(("%-8s %7s %7s %11s %11s %11s %11s %9s %9s"):format("kvs", "pb B", "json B", "pb ns", "pb+dflt ns",
  "json ns", "json+kv ns", "pb/json", "full"))
for _, n in ipairs { 1, 100 } do
  local pb, json = reply(n)
  -- both decode to the same kvs
  local a, b = pb_full(pb), json_full(json)
  assert(#a == n and #b == n and a[n].key == b[n].key and a[n].lease == b[n].lease and a[n].value == b[n].value)
  local t_pb, t_pbf = per_call(pb_only, pb), per_call(pb_full, pb)
  local t_js, t_jsf = per_call(json_only, json), per_call(json_full, json)
  print(("%-8d %7d %7d %11.0f %11.0f %11.0f %11.0f %9.2f %9.2f"):format(n, #pb, #json, t_pb * 1e9, t_pbf * 1e9,
    t_js * 1e9, t_jsf * 1e9, t_pb / t_js, t_pbf / t_jsf))
end
print("pb/json: pb_decode against json_decode alone; full: both as coord's kv tables, every field "
  .. "there (pb: pb_decode with defaults; json: + base64 and int64 strings, coord.etcd.proto.kv)")
