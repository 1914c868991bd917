-- coord.etcd.proto: the etcd v3 JSON gateway's encodings, shared by the client and its
-- watches: base64 bytes, int64 fields sent as strings, kv tables, prefix range ends.

local core = require "coord.core"

local M = {}

local b64encode, b64decode, i64, u64 = core.b64encode, core.b64decode, core.i64, core.u64
local math_type = math.type

M.b64 = b64encode

--- Decodes a base64 field; an absent field (etcd omits empty ones) is "".
function M.bytes(s)
  if s == nil then return "" end
  return (assert(b64decode(s)))
end

--- An int64 field (a JSON string or, from the encoder's side, an integer) as a Lua
--- integer; an absent field is 0.
function M.int(v)
  if v == nil then return 0 end
  if math_type(v) == "integer" then return v end
  return (assert(i64(v)))
end

--- A uint64 field (member and cluster IDs) as the Lua integer with the same 64 bits
--- (negative above 2^63-1); an absent field is 0.
function M.uint(v)
  if v == nil then return 0 end
  if math_type(v) == "integer" then return v end
  return (assert(u64(v)))
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

--- A kv table from the gateway's JSON kv, with `strip` bytes of namespace prefix removed
--- from the key.
local bytes, int, uint = M.bytes, M.int, M.uint

function M.kv(j, strip)
  local key = bytes(j.key)
  if strip and strip > 0 then key = key:sub(strip + 1) end
  return {
    key = key,
    value = bytes(j.value),
    create_revision = int(j.create_revision),
    mod_revision = int(j.mod_revision),
    version = int(j.version),
    lease = int(j.lease),
  }
end

--- The response header as {cluster_id, member_id, revision, raft_term} integers.
local EMPTY = {}
local Header = require("coord.errors").record("etcd.header")

function M.header(j)
  j = j or EMPTY
  return setmetatable({
    cluster_id = uint(j.cluster_id),
    member_id = uint(j.member_id),
    revision = int(j.revision),
    raft_term = int(j.raft_term),
  }, Header)
end

return M
