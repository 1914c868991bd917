-- coord.etcd.proto: the etcd v3 JSON gateway's encodings, shared by the client and its
-- watches: base64 bytes, int64 fields sent as strings, kv tables, prefix range ends.

local core = require "coord.core"

local M = {}

local b64encode, b64decode, i64, u64 = core.b64encode, core.b64decode, core.i64, core.u64

M.b64 = b64encode

--- Decodes a base64 field; an absent field (etcd omits empty ones) is "".
function M.bytes(s)
  if s == nil then return "" end
  local b, err = b64decode(s)
  if b == nil then error(err, 0) end
  return b
end

--- An int64 field (a JSON string or, from the encoder's side, an integer) as a Lua
--- integer; an absent field is 0.
-- (core.i64 and core.u64 pass integers through; one C call per field, no assert call)
function M.int(v)
  if v == nil then return 0 end
  local n, err = i64(v)
  if n == nil then error(err, 0) end
  return n
end

--- A uint64 field (member and cluster IDs) as the Lua integer with the same 64 bits
--- (negative above 2^63-1); an absent field is 0.
function M.uint(v)
  if v == nil then return 0 end
  local n, err = u64(v)
  if n == nil then error(err, 0) end
  return n
end

--- The range end that selects every key starting with `key`: the key with its last byte
--- below 0xff incremented and the rest cut; "\0" (to the end of the keyspace) when every
--- byte is 0xff or the key is empty.
function M.prefix_end(key)
  for i = #key, 1, -1 do
    local b = key:byte(i)
    if b < 0xff then return key:sub(1, i - 1) .. string.char(b + 1) end
  end
  return "\0"
end

-- M.kv and M.header run for every kv and reply, so they call the C parsers directly (one C
-- call per present field): `parse(v) or bad(parse, v)`, where bad raises the parser's message.
local function bad(parse, v)
  error((select(2, parse(v))), 0)
end

--- A kv table from the gateway's JSON kv, with `strip` bytes of namespace prefix removed
--- from the key.
function M.kv(j, strip)
  local k, v, c, m, n, l = j.key, j.value, j.create_revision, j.mod_revision, j.version, j.lease
  local key = k ~= nil and (b64decode(k) or bad(b64decode, k)) or ""
  if strip and strip > 0 then key = key:sub(strip + 1) end
  return {
    key = key,
    value = v ~= nil and (b64decode(v) or bad(b64decode, v)) or "",
    create_revision = c ~= nil and (i64(c) or bad(i64, c)) or 0,
    mod_revision = m ~= nil and (i64(m) or bad(i64, m)) or 0,
    version = n ~= nil and (i64(n) or bad(i64, n)) or 0,
    lease = l ~= nil and (i64(l) or bad(i64, l)) or 0,
  }
end

--- M.kv's table made of j itself, converted in place (no copy): for a reply just decoded
--- whose j is not read again. j must hold a KeyValue's fields only, as the gateway sends.
function M.kv_in_place(j, strip)
  local k, v, c, m, n, l = j.key, j.value, j.create_revision, j.mod_revision, j.version, j.lease
  local key = k ~= nil and (b64decode(k) or bad(b64decode, k)) or ""
  if strip and strip > 0 then key = key:sub(strip + 1) end
  j.key = key
  j.value = v ~= nil and (b64decode(v) or bad(b64decode, v)) or ""
  j.create_revision = c ~= nil and (i64(c) or bad(i64, c)) or 0
  j.mod_revision = m ~= nil and (i64(m) or bad(i64, m)) or 0
  j.version = n ~= nil and (i64(n) or bad(i64, n)) or 0
  j.lease = l ~= nil and (i64(l) or bad(i64, l)) or 0
  return j
end

--- The response header as {cluster_id, member_id, revision, raft_term} integers.
local EMPTY = {}
local Header = require("coord.errors").record("etcd.header")

function M.header(j)
  j = j or EMPTY
  local c, m, r, t = j.cluster_id, j.member_id, j.revision, j.raft_term
  return setmetatable({
    cluster_id = c ~= nil and (u64(c) or bad(u64, c)) or 0,
    member_id = m ~= nil and (u64(m) or bad(u64, m)) or 0,
    revision = r ~= nil and (i64(r) or bad(i64, r)) or 0,
    raft_term = t ~= nil and (i64(t) or bad(i64, t)) or 0,
  }, Header)
end

--- M.header's record made of j itself, converted in place, as M.kv_in_place.
-- What get reads of a range reply: the header and the first kv (see core.json_picker).
local GET_PICKER = core.json_picker { "header.cluster_id:u", "header.member_id:u", "header.revision:i",
  "header.raft_term:i", "kvs.1:p", "kvs.1.key:b", "kvs.1.value:b", "kvs.1.create_revision:i",
  "kvs.1.mod_revision:i", "kvs.1.version:i", "kvs.1.lease:i" }
local json_pick = core.json_pick

--- The first kv (false when there is none) and the header of a range reply's JSON text, read
--- without decoding the rest: the tables M.kv and M.header would make from the decoded reply.
--- nil when the text needs the full decode (core.json_pick's cases); `strip` as for M.kv.
function M.get_reply(body, strip)
  local ok, cid, mid, rev, term, has, k, v, c, m, n, l = json_pick(body, GET_PICKER)
  if not ok then return nil end
  local header = setmetatable({ cluster_id = cid or 0, member_id = mid or 0, revision = rev or 0,
    raft_term = term or 0 }, Header)
  if not has then return false, header end
  k = k or ""
  if strip and strip > 0 then k = k:sub(strip + 1) end
  return { key = k, value = v or "", create_revision = c or 0, mod_revision = m or 0, version = n or 0,
    lease = l or 0 }, header
end

function M.header_in_place(j)
  if j == nil then return M.header(nil) end
  local c, m, r, t = j.cluster_id, j.member_id, j.revision, j.raft_term
  j.cluster_id = c ~= nil and (u64(c) or bad(u64, c)) or 0
  j.member_id = m ~= nil and (u64(m) or bad(u64, m)) or 0
  j.revision = r ~= nil and (i64(r) or bad(i64, r)) or 0
  j.raft_term = t ~= nil and (i64(t) or bad(i64, t)) or 0
  return setmetatable(j, Header)
end

--- The results of a range reply decoded from protobuf (transport "grpc": bytes and integers
--- already, fields at their default absent) as M.get_reply gives them: the first kv (false
--- when there is none) and the header, made of the decoded tables themselves.
function M.pb_get(j, strip)
  local header = M.pb_header(j.header)
  local kv = j.kvs and j.kvs[1]
  if not kv then return false, header end
  return M.pb_kv(kv, strip), header
end

--- M.kv's table made of a KeyValue decoded from protobuf, in place; `strip` as for M.kv.
function M.pb_kv(kv, strip)
  local key = kv.key or ""
  if strip and strip > 0 then key = key:sub(strip + 1) end
  kv.key, kv.value = key, kv.value or ""
  kv.create_revision, kv.mod_revision = kv.create_revision or 0, kv.mod_revision or 0
  kv.version, kv.lease = kv.version or 0, kv.lease or 0
  return kv
end

--- M.header's record made of a ResponseHeader decoded from protobuf, in place (nil: zeros).
function M.pb_header(h)
  if h == nil then return M.header(nil) end
  h.cluster_id, h.member_id = h.cluster_id or 0, h.member_id or 0
  h.revision, h.raft_term = h.revision or 0, h.raft_term or 0
  return setmetatable(h, Header)
end

return M
