-- Streaming replies and streamed request bodies against the local peer.
local coord = require "coord"
local helpers = require "helpers"
local http = coord.http

describe("coord.http streams", function()
  local peer
  setup(function() peer = helpers.start_peer() end)
  teardown(function() peer.stop() end)

  it("delivers lines split across chunks and many lines in one chunk", function()
    local lines, status = coord.run(function()
      local s <close> = http.stream { url = peer.url("/lines-split") }
      local st = assert(s:response())
      local out = {}
      for line in s:lines() do out[#out + 1] = line end
      assert.is_nil(s.error)
      return out, st
    end)
    assert.are.equal(200, status)
    assert.are.same({ "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet" }, lines)
  end)

  it("pauses a stream whose reader is slow and loses nothing", function()
    local n, len = 300000, 100 -- 30 MB: more than the kernel's socket buffers can absorb
    local result = coord.run(function()
      local s <close> = http.stream { url = peer.url("/flood?id=slow&lines=" .. n .. "&len=" .. len), buffer = 1 << 20 }
      assert(s:response())
      -- the peer reports when its writes block because we stopped reading
      local blocked = http.get(peer.url("/blocked?id=slow&timeout_ms=10000"))
      local stats = s:stats()
      local expect, bad = 1, 0
      for line in s:lines() do
        local seq = tonumber(line:match("^(%d+) "))
        if seq ~= expect or #line ~= len - 1 then bad = bad + 1 end
        expect = expect + 1
      end
      return { blocked = blocked.body, stats = stats, count = expect - 1, bad = bad, err = s.error }
    end)
    assert.are.equal("blocked", result.blocked)
    assert.is_true(result.stats.paused)
    assert.is_true(result.stats.pauses >= 1)
    assert.is_true(result.stats.buffered <= (1 << 20) + 65536, "buffered " .. result.stats.buffered)
    assert.are.equal(n, result.count)
    assert.are.equal(0, result.bad)
    assert.is_nil(result.err)
  end)

  it("carries many messages on one streamed request body", function()
    local got = coord.run(function()
      local s <close> = http.stream { url = peer.url("/duplex"), upload = true,
                                      headers = { "Expect: 100-continue" } }
      local out = {}
      for i = 1, 20 do
        assert(s:write("msg" .. i .. "\n"))
        out[#out + 1] = s:read_line() -- the echo arrives while the body is still open
      end
      s:finish()
      out[#out + 1] = s:read_line()
      out[#out + 1] = s:read_line() or "<eof>"
      return out
    end)
    assert.are.equal(22, #got)
    for i = 1, 20 do assert.are.equal("echo:msg" .. i, got[i]) end
    assert.are.equal("bye", got[21])
    assert.are.equal("<eof>", got[22])
  end)

  it("reports a failed stream on the first read", function()
    local err = coord.run(function()
      local s = http.stream { url = "http://127.0.0.1:1/" }
      local _, e = s:read_line()
      return e
    end)
    assert.are.equal("connect", err.kind)
  end)

  it("closing a stream wakes its reader with a canceled error and closes the connection", function()
    local err = coord.run(function()
      local s = http.stream { url = peer.url("/stall?id=s1") }
      coord.spawn(function() coord.sleep(0.02) s:close() end)
      local _, e = s:read_line()
      return e
    end)
    assert.are.equal("canceled", err.kind)
    assert.are.equal("closed", http.get(peer.url("/closed?id=s1&timeout_ms=5000")).body)
  end)

  it("refuses writes to a stream that is not an upload, and after finish", function()
    coord.run(function()
      local s <close> = http.stream { url = peer.url("/duplex"), upload = true }
      s:finish()
      local ok, err = s:write("late\n")
      assert.is_nil(ok)
      assert.are.equal("closed", err.kind)
      local g <close> = http.stream { url = peer.url("/hello") }
      assert.has_error(function() g:write("x") end)
    end)
  end)
end)
