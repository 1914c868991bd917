-- The protobuf wire codec (csrc/pb.c) and etcd's schemas (coord.etcd.pb_schema): every wire type,
-- proto3 presence, golden bytes from the protobuf encoding spec, malformed input, and a fuzz.
local core = require "coord.core"
local schema = require "coord.etcd.pb_schema"

local E, D = core.pb_encode, core.pb_decode
local etcd = schema.types

local function hex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

local function unhex(h)
  return (h:gsub("%s", ""):gsub("..", function(x) return string.char(tonumber(x, 16)) end))
end

local function varint(n)
  local out = {}
  repeat
    local b = n & 0x7f
    n = n >> 7
    out[#out + 1] = string.char(n ~= 0 and b | 0x80 or b)
  until n == 0
  return table.concat(out)
end

-- one field of every type, singular and repeated, a nested message, a oneof and a self-reference
local T = core.pb_compile {
  All = {
    { 1, "i32", "int32" }, { 2, "i64", "int64" }, { 3, "u32", "uint32" }, { 4, "u64", "uint64" },
    { 5, "s32", "sint32" }, { 6, "s64", "sint64" }, { 7, "b", "bool" }, { 8, "e", "enum" },
    { 9, "f32", "fixed32" }, { 10, "sf32", "sfixed32" }, { 11, "fl", "float" }, { 12, "f64", "fixed64" },
    { 13, "sf64", "sfixed64" }, { 14, "d", "double" }, { 15, "str", "string" }, { 16, "by", "bytes" },
    { 17, "sub", "Sub" },
    { 21, "ri32", "int32", "repeated" }, { 22, "ri64", "int64", "repeated" }, { 23, "rs64", "sint64", "repeated" },
    { 24, "rf32", "fixed32", "repeated" }, { 25, "rd", "double", "repeated" }, { 26, "rb", "bool", "repeated" },
    { 27, "rby", "bytes", "repeated" }, { 28, "rsub", "Sub", "repeated" },
    { 30, "one_i", "int64", oneof = "u" }, { 31, "one_s", "bytes", oneof = "u" }, { 32, "one_m", "Sub", oneof = "u" },
  },
  Sub = { { 1, "x", "int64" }, { 2, "name", "string" } },
  Nest = { { 1, "n", "Nest" } },
  -- the examples of the protobuf encoding spec (protobuf.dev, "Encoding")
  Test1 = { { 1, "a", "int32" } },
  Test2 = { { 2, "b", "string" } },
  Test3 = { { 3, "c", "Test1" } },
  Test5 = { { 6, "f", "int32", "repeated" } },
}

local function roundtrip(msg, t)
  local bytes = E(msg, t)
  assert.are.equal("string", type(bytes))
  local back, err = D(msg, bytes)
  assert.is_nil(err)
  return back, bytes
end

describe("the protobuf codec", function()
  it("round-trips 64-bit integers exactly, uint64 above 2^63-1 with the same bits", function()
    for _, v in ipairs { 1, -1, 150, math.maxinteger, math.mininteger, 0x2ddccbc058a50c18, -0x7f } do
      local back = roundtrip(T.All, { i64 = v, u64 = v, s64 = v, f64 = v, sf64 = v })
      for _, k in ipairs { "i64", "u64", "s64", "f64", "sf64" } do
        assert.are.equal(v, back[k], k)
        assert.are.equal("integer", math.type(back[k]))
      end
    end
    assert.are.equal("ffffffffffffffffff01", hex(E(T.All, { u64 = -1 })):sub(3)) -- uint64 max as -1
    assert.are.equal(-1, D(T.All, unhex("20 ffffffffffffffffff01")).u64)
    assert.are.equal(math.mininteger, D(T.All, unhex("20 80808080808080808001")).u64)
  end)

  it("round-trips 32-bit integers at their edges and checks their ranges", function()
    for _, v in ipairs { 1, -1, 2147483647, -2147483648 } do
      local back = roundtrip(T.All, { i32 = v, s32 = v, sf32 = v, e = v })
      assert.are.same({ i32 = v, s32 = v, sf32 = v, e = v }, back)
    end
    for _, v in ipairs { 1, 4294967295 } do
      assert.are.same({ u32 = v, f32 = v }, (roundtrip(T.All, { u32 = v, f32 = v })))
    end
    -- a negative int32 goes as a sign-extended 10-byte varint; sint32 zigzags
    assert.are.equal("08ffffffffffffffffff01", hex(E(T.All, { i32 = -1 })))
    assert.are.equal("2801", hex(E(T.All, { s32 = -1 })))
    assert.are.equal("2803", hex(E(T.All, { s32 = -2 })))
    assert.are.equal("28feffffff0f", hex(E(T.All, { s32 = 2147483647 })))
    assert.are.equal("28ffffffff0f", hex(E(T.All, { s32 = -2147483648 })))
    assert.are.equal("3001", hex(E(T.All, { s64 = -1 })))
    assert.are.equal("18ffffffff0f", hex(E(T.All, { u32 = 4294967295 })))
    -- an int32 read from a wider varint keeps its low 32 bits, as protobuf says
    assert.are.equal(-1, D(T.All, unhex("08 ffffffff0f")).i32)
    for k, v in pairs { i32 = 2147483648, u32 = -1, sf32 = -2147483649, f32 = 4294967296, e = 1 << 40 } do
      assert.has_error(function() E(T.All, { [k] = v }) end, "pb_encode: All." .. k .. ": out of the "
        .. ((k == "u32" or k == "f32") and "uint32" or "int32") .. " range")
    end
  end)

  it("round-trips bools, floats, doubles, strings and bytes with NULs", function()
    local back = roundtrip(T.All, { b = true, d = 0.1, fl = 0.25, str = "héllo", by = "a\0b\0" })
    assert.are.same({ b = true, d = 0.1, fl = 0.25, str = "héllo", by = "a\0b\0" }, back)
    local third = string.unpack("<f", string.pack("<f", 1 / 3))
    assert.are.equal(third, roundtrip(T.All, { fl = 1 / 3 }).fl)
    assert.are.equal(math.huge, roundtrip(T.All, { d = math.huge }).d)
    assert.are.equal(-math.huge, roundtrip(T.All, { fl = -math.huge }).fl)
    local nan = roundtrip(T.All, { d = 0 / 0 }).d
    assert.is_true(nan ~= nan)
    assert.are.equal("71" .. hex(string.pack("<d", 1e308)), hex(E(T.All, { d = 1e308 })))
    assert.are.equal("5d" .. hex(string.pack("<f", 0.25)), hex(E(T.All, { fl = 0.25 })))
    -- -0.0 is not the default (its bits are not zero), so it travels
    assert.are.equal("71" .. hex(string.pack("<d", -0.0)), hex(E(T.All, { d = -0.0 })))
    assert.are.equal(-math.huge, 1 / D(T.All, E(T.All, { d = -0.0 })).d)
  end)

  it("leaves singular fields at their default out, keeps oneof members and messages", function()
    assert.are.equal("", E(T.All, { i32 = 0, i64 = 0, u64 = 0, b = false, d = 0.0, fl = 0.0, str = "", by = "",
      f32 = 0, sf64 = 0, e = 0 }))
    assert.are.same({}, D(T.All, ""))
    assert.are.equal("f00100", hex(E(T.All, { one_i = 0 })))
    assert.are.equal("fa0100", hex(E(T.All, { one_s = "" })))
    assert.are.equal("8a0100", hex(E(T.All, { sub = {} })))
    assert.are.same({ one_s = "" }, D(T.All, E(T.All, { one_s = "" })))
    assert.are.same({ sub = {} }, D(T.All, E(T.All, { sub = {} })))
  end)

  it("fills absent singular scalars with their defaults when asked, as the JSON path's tables have them", function()
    local bytes = E(T.All, { i64 = 5, sub = { name = "n" }, rsub = { {} }, one_s = "x" })
    local t = D(T.All, bytes, true)
    assert.are.same({ i32 = 0, i64 = 5, u32 = 0, u64 = 0, s32 = 0, s64 = 0, b = false, e = 0, f32 = 0, sf32 = 0,
      fl = 0.0, f64 = 0, sf64 = 0, d = 0.0, str = "", by = "", sub = { x = 0, name = "n" }, rsub = { { x = 0, name = "" } },
      one_s = "x" }, t)
    assert.are.equal("float", math.type(t.d))
    assert.are.same({ i64 = 5, sub = { name = "n" }, rsub = { {} }, one_s = "x" }, D(T.All, bytes))
    local kv = D(etcd.KeyValue, E(etcd.KeyValue, { key = "k" }), true)
    assert.are.same({ key = "k", value = "", create_revision = 0, mod_revision = 0, version = 0, lease = 0 }, kv)
  end)

  it("round-trips repeated fields, packing the scalars, and decodes packed and unpacked alike", function()
    local t = {
      ri32 = { 1, -1, 300 }, ri64 = { math.mininteger, 0, math.maxinteger }, rs64 = { -1, 1, -2 },
      rf32 = { 0, 4294967295 }, rd = { 0.5, -2.25 }, rb = { true, false, true },
      rby = { "", "a\0b", "" }, rsub = { {}, { x = 1, name = "n" } },
    }
    local back, bytes = roundtrip(T.All, t)
    assert.are.same(t, back)
    -- one record per packed field; bytes and messages stay one record per element
    assert.are.equal(1, select(2, bytes:gsub("\xaa\x01", "")))  -- field 21, wire type 2
    assert.are.equal("", E(T.All, { ri32 = {}, rby = {} }))
    -- the same list unpacked (one varint record per element), and the two forms mixed
    local unpacked = "\xa8\x01\x01" .. "\xa8\x01" .. varint(-1) .. "\xa8\x01\xac\x02"
    assert.are.same({ 1, -1, 300 }, D(T.All, unpacked).ri32)
    assert.are.same({ 7, 1, -1, 300 }, D(T.All, "\xaa\x01\x01\x07" .. unpacked).ri32)
    assert.are.same({ 1.5, 2.5 }, D(T.All, "\xc9\x01" .. string.pack("<d", 1.5) .. "\xca\x01\x08" .. string.pack("<d", 2.5)).rd)
  end)

  it("matches the protobuf encoding spec's examples in both directions", function()
    local cases = {
      { T.Test1, { a = 150 }, "089601" },
      { T.Test2, { b = "testing" }, "120774657374696e67" },
      { T.Test3, { c = { a = 150 } }, "1a03089601" },
      { T.Test5, { f = { 3, 270, 86942 } }, "3206038e029ea705" },
    }
    for _, c in ipairs(cases) do
      assert.are.equal(c[3], hex(E(c[1], c[2])))
      assert.are.same(c[2], D(c[1], unhex(c[3])))
    end
  end)

  it("skips unknown fields of every wire type, groups included", function()
    local unknown = "\x98\x06\x96\x01" -- field 99 varint
      .. "\x99\x06" .. ("\1"):rep(8) -- fixed64
      .. "\x9a\x06\x03abc" -- length-delimited
      .. "\x9d\x06" .. ("\2"):rep(4) -- fixed32
      .. "\x9b\x06" .. "\x08\x01" .. "\xa3\x06\xa4\x06" .. "\x9c\x06" -- a group holding a varint and a group
    assert.are.same({ a = 150 }, D(T.Test1, unknown .. "\x08\x96\x01" .. unknown))
    -- a field the schema names with another type in another message is just unknown here
    assert.are.same({}, D(T.Test1, "\x12\x07testing"))
  end)

  it("merges a message field seen twice and lets the last oneof member win", function()
    local twice = E(T.All, { sub = { x = 5 } }) .. E(T.All, { sub = { name = "n" } })
    assert.are.same({ sub = { x = 5, name = "n" } }, D(T.All, twice))
    assert.are.same({ x = 5, name = "n" }, D(T.All, twice, true).sub) -- defaults do not undo the first part
    local both = E(T.All, { one_i = 4 }) .. E(T.All, { one_s = "s" })
    assert.are.same({ one_s = "s" }, D(T.All, both))
    assert.are.same({ one_i = 4 }, D(T.All, E(T.All, { one_s = "s" }) .. E(T.All, { one_i = 4 })))
  end)

  it("returns nil and a message for malformed input, never reading past it", function()
    local cases = {
      { T.Test1, "\x08", "offset 1: truncated varint" },
      { T.Test1, "\x08\x96", "offset 1: truncated varint" },
      { T.Test1, "\x08" .. ("\xff"):rep(9) .. "\x02", "offset 1: varint overflows 64 bits" },
      { T.Test1, "\x08" .. ("\xff"):rep(10) .. "\x01", "offset 1: varint overflows 64 bits" },
      { T.Test2, "\x12\x08testing", "offset 1: length past the end" },
      { T.Test2, "\x12" .. ("\xff"):rep(9) .. "\x01", "offset 1: length past the end" },
      { T.Test1, "\x0a\x01a", "offset 0: wrong wire type for a known field" },
      { T.Test2, "\x10\x01", "offset 0: wrong wire type for a known field" },
      { T.Test3, "\x1d\x01\x02\x03\x04", "offset 0: wrong wire type for a known field" },
      { T.Test1, "\x16\x00", "offset 0: invalid wire type" },
      { T.Test1, "\x17", "offset 0: invalid wire type" },
      { T.Test1, "\x0e\x00", "offset 0: wrong wire type for a known field" },
      { T.Test1, "\x00\x01", "offset 0: invalid field number" },
      { T.Test1, "\x11\x01\x02", "offset 1: truncated fixed-width value" },
      { T.All, "\x49\x01\x02", "offset 0: wrong wire type" },
      { T.All, "\x4d\x01\x02", "offset 1: truncated fixed32" },
      { T.All, "\x61\x01", "offset 1: truncated fixed64" },
      { T.All, "\xc2\x01\x03\x01\x02\x03", "offset 3: truncated fixed32" }, -- packed fixed32 of 3 bytes
      { T.All, "\xaa\x01\x02\x01\x80", "offset 4: truncated varint" }, -- a packed varint runs past its record
      { T.Test1, "\x1b\x08\x01", "offset 3: truncated varint" }, -- a group that never ends
      { T.Test1, "\x1b\x24", "offset 1: mismatched end of group" },
      { T.Test1, "\x1c", "offset 0: end of group without a start" },
      { T.Test3, "\x1a\x05\x08\x96\x01", "offset 1: length past the end" },
      { T.Test3, "\x1a\x01\x08\x08\x01", "offset 3: truncated varint" }, -- the nested message ends inside its field
    }
    for _, c in ipairs(cases) do
      local v, err = D(c[1], c[2])
      assert.is_nil(v, hex(c[2]))
      assert.matches("invalid protobuf at " .. c[3], err, 1, true)
    end
  end)

  it("decodes messages nested 64 deep and refuses 65", function()
    local function nest(k)
      local s = ""
      for _ = 1, k do s = "\x0a" .. varint(#s) .. s end
      return s
    end
    local v = assert(D(T.Nest, nest(63)))
    local depth = 1
    while v.n do v, depth = v.n, depth + 1 end
    assert.are.equal(64, depth)
    local none, err = D(T.Nest, nest(64))
    assert.is_nil(none)
    assert.matches("nested too deeply", err)
    local groups = ("\x13"):rep(70) .. ("\x14"):rep(70) -- unknown groups nested as deep, on field 2
    assert.matches("nested too deeply", select(2, D(T.Nest, groups)))
    assert.are.same({}, D(T.Nest, ("\x13"):rep(20) .. ("\x14"):rep(20)))
  end)

  it("raises on values of the wrong type and on bad arguments", function()
    local bad = {
      { { i64 = "1" }, "All.i64: integer expected" }, { { i64 = 1.5 }, "All.i64: integer expected" },
      { { b = 1 }, "All.b: boolean expected" }, { { by = 1 }, "All.by: string expected" },
      { { d = "x" }, "All.d: number expected" }, { { sub = 1 }, "All.sub: table expected" },
      { { ri32 = 1 }, "All.ri32: table (a list) expected" }, { { ri32 = { "x" } }, "All.ri32: integer expected" },
      { { one_i = 1, one_s = "" }, "All.one_s: another field of its oneof is set too" },
    }
    for _, c in ipairs(bad) do
      assert.has_error(function() E(T.All, c[1]) end, "pb_encode: " .. c[2])
    end
    assert.are.equal(E(T.All, { i64 = 3 }), E(T.All, { i64 = 3.0 })) -- a float with an integer value is fine
    local cycle = {}
    cycle.n = cycle
    assert.has_error(function() E(T.Nest, cycle) end, "pb_encode: Nest.n: nested too deeply (a cycle?)")
    assert.has_error(function() E({}, {}) end)
    assert.has_error(function() E(T.All, "x") end)
    assert.has_error(function() D(T.All, {}) end)
    assert.has_error(function() D("All", "") end)
    assert.are.equal("pb message All", tostring(T.All))
  end)

  it("refuses malformed schemas", function()
    local bad = {
      { { M = { { 1, "a", "nosuch" } } }, "M.a: unknown type 'nosuch'" },
      { { M = { { 1, "a", "int32" }, { 1, "b", "int32" } } }, "M: field number 1 used twice" },
      { { M = { { 1, "a", "int32" }, { 2, "a", "int32" } } }, "M.a: name used twice" },
      { { M = { { 0, "a", "int32" } } }, "M field #1: field number expected" },
      { { M = { { 536870912, "a", "int32" } } }, "M field #1: field number expected" },
      { { M = { { 1, "a", "int32", "optional" } } }, "must be \"repeated\" or absent" },
      { { M = { { 1, "a", "int32", "repeated", oneof = "g" } } }, "oneof must name a group of singular fields" },
      { { M = { "x" } }, "M field #1: table expected" },
      { { [1] = {} }, "message names must be strings" },
    }
    for _, c in ipairs(bad) do
      local ok, err = pcall(core.pb_compile, c[1])
      assert.is_false(ok)
      assert.matches(c[2], err, 1, true)
    end
  end)
end)

describe("etcd's schemas", function()
  it("compile every message the gRPC transport needs", function()
    for _, name in ipairs {
      "ResponseHeader", "KeyValue", "Event", "RangeRequest", "RangeResponse", "PutRequest", "PutResponse",
      "DeleteRangeRequest", "DeleteRangeResponse", "TxnRequest", "TxnResponse", "Compare", "RequestOp", "ResponseOp",
      "CompactionRequest", "CompactionResponse", "LeaseGrantRequest", "LeaseGrantResponse", "LeaseRevokeRequest",
      "LeaseKeepAliveRequest", "LeaseKeepAliveResponse", "LeaseTimeToLiveRequest", "LeaseTimeToLiveResponse",
      "LeaseLeasesResponse", "WatchRequest", "WatchCreateRequest", "WatchCancelRequest", "WatchProgressRequest",
      "WatchResponse", "AuthenticateRequest", "AuthenticateResponse", "MemberListResponse", "MemberAddRequest",
      "MemberAddResponse", "MemberRemoveRequest", "MemberUpdateRequest", "MemberPromoteRequest", "StatusResponse",
      "AlarmRequest", "AlarmResponse", "DefragmentResponse", "HashKVRequest", "HashKVResponse", "SnapshotResponse",
      "MoveLeaderRequest", "AuthUserAddRequest", "AuthUserGetResponse", "AuthRoleGetResponse",
      "AuthRoleGrantPermissionRequest", "AuthStatusResponse", "User", "Role", "Permission",
      "LockRequest", "LockResponse", "UnlockRequest", "CampaignRequest", "CampaignResponse", "LeaderKey",
      "LeaderRequest", "LeaderResponse", "ProclaimRequest", "ResignRequest",
    } do
      assert.are.equal("pb message " .. name, tostring(etcd[name]))
    end
    assert.are.same({ PUT = 0, DELETE = 1 }, schema.enums["Event.EventType"])
  end)

  -- hand-computed from the encoding spec and the field numbers of rpc.proto / kv.proto
  it("encodes and decodes golden RangeRequest, PutRequest, Compare and WatchRequest bytes", function()
    local cases = {
      { etcd.RangeRequest, { key = "foo", range_end = "fop", limit = 10, serializable = true },
        "0a03666f6f1203666f70180a3801" },
      { etcd.RangeRequest, { key = "\0", range_end = "\0", revision = 1 << 40, count_only = true },
        "0a0100120100" .. "20808080808020" .. "4801" },
      { etcd.PutRequest, { key = "k", value = "v\0", lease = 7587, prev_kv = true }, "0a016b12027600" .. "18a33b" .. "2001" },
      { etcd.Compare, { result = 0, target = 0, key = "k", version = 0 }, "1a016b2000", { key = "k", version = 0 } },
      { etcd.Compare, { result = 3, target = 3, key = "k", value = "", range_end = "l" }, "080310031a016b3a00" .. "8204016c" },
      { etcd.WatchRequest, { cancel_request = { watch_id = 3 } }, "12020803" },
      { etcd.WatchRequest, { progress_request = {} }, "1a00" },
      { etcd.WatchRequest, { create_request = { key = "a", filters = { 1 }, prev_kv = true } }, "0a08" .. "0a0161" .. "2a0101" .. "3001" },
      { etcd.LeaseGrantRequest, { TTL = -1 }, "08ffffffffffffffffff01" },
      { etcd.TxnRequest, { success = { { request_put = { key = "k" } } } }, "1205" .. "1203" .. "0a016b" },
    }
    for _, c in ipairs(cases) do
      assert.are.equal(c[3], hex(E(c[1], c[2])))
      assert.are.same(c[4] or c[2], D(c[1], unhex(c[3])))
    end
  end)

  it("decodes a golden RangeResponse into exact integers and Lua strings", function()
    local bytes = unhex("0a0f08ffffffffffffffffff01 10 2a 18 05 12 0e 0a 01 61 10 04 18 05 20 01 2a 01 62 30 07 2001")
    local r = assert(D(etcd.RangeResponse, bytes))
    assert.are.same({
      header = { cluster_id = -1, member_id = 42, revision = 5 },
      kvs = { { key = "a", create_revision = 4, mod_revision = 5, version = 1, value = "b", lease = 7 } },
      count = 1,
    }, r)
    assert.are.equal(bytes, E(etcd.RangeResponse, r))
  end)

  it("survives 20,000 mutated and random inputs, and what it decodes encodes back the same", function()
    local seed = tonumber(os.getenv("COORD_FUZZ_SEED")) or 13
    math.randomseed(seed)
    local kv = { key = "k\0ey", value = ("v"):rep(40), create_revision = 3, mod_revision = math.maxinteger,
      version = 1, lease = -1 }
    local header = { cluster_id = -1, member_id = 1 << 62, revision = 99, raft_term = 2 }
    local seeds = {
      { etcd.RangeResponse, { header = header, kvs = { kv, kv, { key = "x" } }, more = true, count = 3 } },
      { etcd.TxnResponse, { header = header, succeeded = true, responses = {
        { response_range = { header = header, kvs = { kv } } }, { response_put = { header = header, prev_kv = kv } },
        { response_txn = { responses = { { response_delete_range = { deleted = 2, prev_kvs = { kv } } } } } } } } },
      { etcd.WatchResponse, { header = header, watch_id = 7, created = true, cancel_reason = "x", events = {
        { type = 1, kv = kv, prev_kv = kv }, { kv = kv } } } },
      { etcd.TxnRequest, { compare = { { result = 2, target = 1, key = "a", create_revision = 0, range_end = "b" } },
        success = { { request_range = { key = "a", limit = 5 } } }, failure = { { request_put = { key = "a", value = "b" } } } } },
      { etcd.StatusResponse, { header = header, version = "3.5.16", dbSize = 1 << 40, errors = { "a", "b" }, isLearner = true } },
      { etcd.WatchRequest, { create_request = { key = "a", filters = { 0, 1 }, watch_id = -1, fragment = true } } },
      { T.All, { i32 = -5, u64 = -1, s32 = -7, s64 = 9, b = true, f32 = 1, sf32 = -1, fl = 1.5, f64 = 2, sf64 = -3,
        d = 2.5, str = "s", by = "\0", sub = { x = 1 }, ri32 = { 1, 2, 3 }, rs64 = { -1 }, rf32 = { 5, 6 }, rd = { 1.5 },
        rb = { true }, rby = { "a" }, rsub = { { x = 2 } }, one_m = { name = "m" } } },
    }
    local function mutate(s)
      local n = #s
      local what = math.random(8)
      if what == 1 or n == 0 then -- random bytes
        local t = {}
        for i = 1, math.random(0, 64) do t[i] = string.char(math.random(0, 255)) end
        return table.concat(t)
      elseif what == 2 then -- truncate
        return s:sub(1, math.random(0, n - 1))
      elseif what == 3 then -- delete a byte
        local i = math.random(n)
        return s:sub(1, i - 1) .. s:sub(i + 1)
      elseif what == 4 then -- insert a byte
        local i = math.random(n + 1)
        return s:sub(1, i - 1) .. string.char(math.random(0, 255)) .. s:sub(i)
      elseif what == 5 then -- duplicate a slice
        local i = math.random(n)
        local j = math.random(i, n)
        return s:sub(1, j) .. s:sub(i, j) .. s:sub(j + 1)
      else -- overwrite bytes, often with the varint continuation bit or 0xff
        local t = { s:byte(1, -1) }
        for _ = 1, math.random(1, 3) do
          local pick = math.random(4)
          t[math.random(n)] = pick == 1 and 0xff or pick == 2 and 0x80 or math.random(0, 255)
        end
        return string.char(table.unpack(t))
      end
    end
    local started, rounds, decoded, rejected = os.time(), 0, 0, 0
    local encodings = {}
    for i, c in ipairs(seeds) do encodings[i] = E(c[1], c[2]) end
    for i = 1, 20000 do
      local k = math.random(#seeds)
      local input = encodings[k]
      for _ = 1, math.random(1, 3) do input = mutate(input) end
      local against = seeds[math.random(#seeds)][1] -- sometimes another message's bytes
      if math.random(2) == 1 then against = seeds[k][1] end
      local ok, v, err = pcall(D, against, input, math.random(4) == 1) -- sometimes with defaults
      assert(ok, "decode raised: " .. tostring(v) .. " on " .. hex(input) .. " (seed " .. seed .. ")")
      if v then
        decoded = decoded + 1
        local again = E(against, v) -- what decodes is always a valid value of its schema
        local back = assert(D(against, again))
        assert.are.equal(hex(again), hex(E(against, back))) -- (fields at their default drop out once)
      else
        rejected = rejected + 1
        assert.matches("^invalid protobuf at offset %d+: ", err)
      end
      rounds = i
      if os.time() - started > 600 then break end
    end
    assert.are.equal(20000, rounds, "the fuzz ran out of its 600 s bound")
    assert.is_true(decoded > 100 and rejected > 100, ("decoded %d, rejected %d"):format(decoded, rejected))
  end)
end)
