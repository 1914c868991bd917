-- The C codecs: base64 and exact 64-bit integers.
local core = require "coord.core"

describe("coord.core codecs", function()
  it("runs on Lua 5.4", function()
    assert.are.equal("Lua 5.4", _VERSION)
  end)

  it("round-trips base64 of every byte value and of empty and odd-length strings", function()
    local all = {}
    for i = 0, 255 do all[#all + 1] = string.char(i) end
    all = table.concat(all)
    for _, s in ipairs({ "", "f", "fo", "foo", "foob", "fooba", "foobar", all, "a\0b" }) do
      assert.are.equal(s, core.b64decode(core.b64encode(s)))
    end
    assert.are.equal("Zm9vYmFy", core.b64encode("foobar"))
    assert.are.equal("Zg==", core.b64encode("f"))
    assert.are.equal("fo", core.b64decode("Zm8")) -- padding is optional
  end)

  it("rejects invalid base64 with nil and a message", function()
    local v, err = core.b64decode("Zm9v!mFy")
    assert.is_nil(v)
    assert.matches("bad character at offset 4", err)
    v, err = core.b64decode("Z")
    assert.is_nil(v)
    assert.matches("bad length", err)
  end)

  it("parses unsigned 64-bit decimals exactly, wrapping above 2^63-1", function()
    assert.are.equal(0, core.u64("0"))
    assert.are.equal(math.maxinteger, core.u64("9223372036854775807"))
    assert.are.equal(math.mininteger, core.u64("9223372036854775808"))
    assert.are.equal(-1, core.u64("18446744073709551615"))
    assert.are.equal(0x2ddccbc058a50c18, core.u64(tostring(0x2ddccbc058a50c18)))
    assert.are.equal("integer", math.type(core.u64("123")))
    assert.are.equal("18446744073709551615", core.u64tostring(-1))
    assert.are.equal("16208224155211710688", core.u64tostring(core.u64("16208224155211710688")))
  end)

  it("rejects out-of-range and malformed unsigned decimals", function()
    for _, s in ipairs({ "18446744073709551616", "99999999999999999999", "", "-1", "1.5", " 1", "0x10" }) do
      local v, err = core.u64(s)
      assert.is_nil(v, s)
      assert.is_string(err)
    end
  end)

  it("parses signed 64-bit decimals exactly", function()
    assert.are.equal(math.mininteger, core.i64("-9223372036854775808"))
    assert.are.equal(math.maxinteger, core.i64("9223372036854775807"))
    assert.are.equal(-42, core.i64("-42"))
    assert.is_nil(core.i64("9223372036854775808"))
    assert.is_nil(core.i64("-9223372036854775809"))
    assert.is_nil(core.i64("-"))
  end)

  it("raises on wrong argument types", function()
    assert.has_error(function() core.b64encode({}) end)
    assert.has_error(function() core.u64({}) end)
    assert.has_error(function() core.u64tostring("x") end)
  end)
end)
