-- The C JSON codec: strict decoding with exact integers, and encoding.
local core = require "coord.core"

describe("coord.core JSON", function()
  it("decodes objects, arrays, strings, literals and keeps integers exact", function()
    local v = core.json_decode('{"a":[1,-2,3.5,1e3,true,false,null],"b":"x","n":{"m":{}}}')
    assert.are.same({ 1, -2, 3.5, 1000.0, true, false, core.null }, v.a)
    assert.are.equal("integer", math.type(v.a[1]))
    assert.are.equal("float", math.type(v.a[4]))
    assert.are.equal("x", v.b)
    assert.are.same({ m = {} }, v.n)
  end)

  it("decodes 64-bit integers exactly, uint64 above 2^63-1 with the same bits", function()
    local v = core.json_decode("[9223372036854775807,-9223372036854775808,18446744073709551615,3304740253564472344]")
    assert.are.equal(math.maxinteger, v[1])
    assert.are.equal(math.mininteger, v[2])
    assert.are.equal(-1, v[3])
    assert.are.equal(0x2ddccbc058a50c18, v[4])
    assert.are.equal("float", math.type(core.json_decode("18446744073709551616")))
  end)

  it("decodes escapes, including surrogate pairs, and binary-safe strings", function()
    assert.are.equal('a"\\/\b\f\n\r\t\0é😀', core.json_decode('"a\\"\\\\\\/\\b\\f\\n\\r\\t\\u0000\\u00e9\\ud83d\\ude00"'))
  end)

  it("rejects invalid JSON with the offset and the reason", function()
    for text, why in pairs({
      ['{"a":1,}'] = "object key expected", ["[1,]"] = "bad number", ["01"] = "leading zero",
      ["[1] x"] = "trailing characters", ['"abc'] = "unterminated string", ["nul"] = "unexpected character",
      [""] = "unexpected end", ['"\\x"'] = "bad escape", ["1."] = "bad fraction",
    }) do
      local v, err = core.json_decode(text)
      assert.is_nil(v, text)
      assert.matches("invalid JSON at offset %d+: " .. why, err)
    end
    local deep = ("["):rep(10000)
    local v, err = core.json_decode(deep)
    assert.is_nil(v)
    assert.matches("nested too deeply", err)
  end)

  it("encodes exactly and round-trips", function()
    local value = { list = { 1, 2, math.maxinteger, math.mininteger }, s = "q\"\n\1", f = 0.1, t = true, z = core.null }
    local text = core.json_encode(value)
    assert.matches('"list":%[1,2,9223372036854775807,%-9223372036854775808%]', text)
    assert.matches('"s":"q\\"\\n\\u0001"', text)
    assert.are.same(value, core.json_decode(text))
    assert.are.equal("[]", core.json_encode(setmetatable({}, { __jsontype = "array" })))
    assert.are.equal("{}", core.json_encode({}))
  end)

  it("raises on values JSON cannot hold", function()
    assert.has_error(function() core.json_encode({ f = print }) end, "cannot encode a function as JSON")
    assert.has_error(function() core.json_encode(0 / 0) end)
    assert.has_error(function() core.json_encode({ [true] = 1 }) end)
    local cycle = {}
    cycle.self = cycle
    assert.has_error(function() core.json_encode(cycle) end)
  end)
end)
