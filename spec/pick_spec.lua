-- core.json_picker / core.json_pick: chosen fields of a JSON text without decoding the rest,
-- and the get paths built on them (proto.get_reply, kv:get's entry) against the full decode.
local core = require "coord.core"
local proto = require "coord.etcd.proto"

local pick, picker, decode = core.json_pick, core.json_picker, core.json_decode

describe("core.json_pick", function()
  local P = picker { "a:s", "b.c:i", "b.d:u", "l.2:n", "l.1:p", "x:B", "y:S" }

  it("returns true and the picked values, converted, nil for the absent ones", function()
    local ok, a, c, d, n, p, x, y = pick(' {"a":"t","b":{"c":"-5","d":"18446744073709551615"},"l":[{},7],'
      .. '"x":"aGk=","y":null} ', P)
    assert.are.same({ true, "t", -5, -1, 7, true, "hi", core.null }, { ok, a, c, d, n, p, x, y })
    assert.are.same({ true }, { pick("{}", P) })
    local r = table.pack(pick('{"z":[1,{"a":2}]}', P))
    assert.are.equal(8, r.n)
    assert.is_true(r[1])
    for i = 2, 8 do assert.is_nil(r[i]) end
  end)

  it("fails (nil) wherever json_decode fails", function()
    local bad = { "", " ", "{", "}", '{"a"}', '{"a":}', '{"a":1,}', "[1,]", "[01]", "[1.]", "[.5]", "[1e]",
      "[-]", '["\\x"]', '["\\u12G4"]', '["a\1"]', '["a', "[tru]", "[nul]", "{} {}", "{}x", '{"a":1 "b":2}',
      "[" .. ("["):rep(600) .. ("]"):rep(600) .. "]", '{"a":"\\', '{1:2}' }
    for _, text in ipairs(bad) do
      assert.is_nil(decode(text), text)
      assert.is_nil(pick(text, P), text)
    end
    local good = { '["\\u00e9\\n\\/\\"",-0,1.5e-3,2E+2,true,false,null,{},[],{"k":[1,{"z":null}]}]',
      '{"a":"x","q":"\\ud800\\udc00"}', " \t\r\n[ 1 , 2 ]\n" }
    local Q = picker { "1:p" } -- (a path's container must be of its kind: P's root is an object)
    for _, text in ipairs(good) do
      assert.is_not_nil(decode(text), text)
      assert.is_true(pick(text, text:find("^%s*%[") and Q or P), text)
    end
  end)

  it("fails when a picked value is not what its path asks for, repeats, or hides in escapes", function()
    for _, text in ipairs { '{"a":1}', '{"a":null}', '{"b":{"c":5}}', '{"b":{"c":"x"}}', '{"b":{"d":"-1"}}',
      '{"l":[1,2.5]}', '{"l":[1,18446744073709551616]}', '{"x":"!!"}', '{"a":"\\u0041"}', '{"a":"t","a":"u"}',
      '{"b":[]}', '{"b":"s"}', '{"l":{"1":2}}', '{"b":{"\\u0063":"1"}}', '"text"', "5" } do
      assert.is_nil(pick(text, P), text)
    end
  end)

  it("decodes base64 as core.b64decode does, long values included, and fails where it fails", function()
    local long = core.b64encode(("\0\255xyz"):rep(4000)) -- (decoded beyond a stack buffer)
    for _, v in ipairs { "", "aGk", "aGk=", "aGk==", long } do
      local ok, _, _, _, _, _, x = pick('{"x":"' .. v .. '"}', P)
      assert.is_true(ok, v)
      assert.are.equal(core.b64decode(v), x)
    end
    for _, v in ipairs { "abcde", "a=bc", long .. "!", long:sub(1, -2) .. "*" } do
      assert.is_nil(core.b64decode(v), v)
      assert.is_nil(pick('{"x":"' .. v .. '"}', P), v)
    end
  end)

  it("raises on a bad picker", function()
    assert.has_error(function() picker {} end)
    assert.has_error(function() picker { "a" } end)
    assert.has_error(function() picker { "a:q" } end)
    assert.has_error(function() picker { "a:s", "a:i" } end)
    assert.has_error(function() picker { ":s" } end)
    assert.has_error(function() pick("{}", {}) end)
  end)
end)

describe("the get paths' picks", function()
  local function b64(s) return core.b64encode(s) end
  local range = '{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437",'
    .. '"revision":"7","raft_term":"2"},"kvs":[{"key":"' .. b64("pfx/k") .. '","create_revision":"3",'
    .. '"mod_revision":"7","version":"2","value":"' .. b64(("v"):rep(100)) .. '","lease":"99"}],"count":"1"}'

  it("etcd: get_reply gives the kv and header the decode and proto.kv / proto.header give", function()
    local kv, header = proto.get_reply(range, 4)
    local j = decode(range)
    assert.are.same(proto.kv(j.kvs[1], 4), kv)
    assert.are.same(proto.header(j.header), header)
    assert.are.equal(getmetatable(proto.header(j.header)), getmetatable(header))
    assert.are.equal(tostring(proto.header(j.header)), tostring(header))
    local none, h2 = proto.get_reply('{"header":{"revision":"8"}}', 0)
    assert.is_false(none)
    assert.are.same(proto.header({ revision = "8" }), h2)
    -- absent fields are the kv's defaults, as proto.kv makes them
    local kv3 = proto.get_reply('{"kvs":[{"mod_revision":"4"}]}', 0)
    assert.are.same(proto.kv({ mod_revision = "4" }), kv3)
    -- what the full decode must handle
    assert.is_nil(proto.get_reply('{"kvs":[{"key":"!!"}]}', 0))
    assert.is_nil(proto.get_reply('{"kvs":"x"}', 0))
    assert.is_nil(proto.get_reply('{"header":{"revision":2}}', 0))
  end)

  it("consul: kv:get's entry is the one the decode and _entry give", function()
    local kvmod = require "coord.consul.kv"
    for _, text in ipairs {
      '[{"LockIndex":1,"Key":"a/b","Flags":18446744073709551615,"Value":"' .. b64("x") .. '","CreateIndex":12,'
        .. '"ModifyIndex":13,"Session":"s-1"}]',
      '[{"LockIndex":0,"Key":"a","Flags":0,"Value":null,"CreateIndex":1,"ModifyIndex":1,"Session":null}]',
      '[{"Key":"a","CreateIndex":1,"ModifyIndex":1}]',
    } do
      local p = table.pack(pick(text, picker { "1:p", "1.Key:S", "1.Value:B", "1.Flags:n", "1.CreateIndex:n",
        "1.ModifyIndex:n", "1.LockIndex:n", "1.Session:S" }))
      assert.is_true(p[1] and p[2])
      assert.are.same(kvmod._entry(decode(text)[1]), kvmod._pick_entry(text))
    end
    assert.is_nil(kvmod._pick_entry("[]"))
    assert.is_nil(kvmod._pick_entry('[{"Key":"a","Flags":1.5}]'))
    assert.is_nil(kvmod._pick_entry('[{"Key":"a","Value":false}]'))
  end)
end)
