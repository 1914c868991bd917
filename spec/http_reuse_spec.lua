-- coord.http reuses a finished request's waiter and C object for the next request: nothing of
-- one request (body, headers, method, failure, cancellation) may leak into the next.
local coord = require "coord"
local helpers = require "helpers"
local http = coord.http

describe("coord.http request reuse", function()
  local peer
  setup(function() peer = helpers.start_peer() end)
  teardown(function() peer.stop() end)

  it("sends each request with its own method, body and headers only", function()
    coord.run(function()
      local big = ("b"):rep(5000) -- larger than the inline buffers: the reply is allocated
      local a = assert(http.request { url = peer.url("/echo"), method = "PUT", body = big,
        headers = { ["X-Test-A"] = "1" } })
      assert.are.equal(big, a.body)
      assert.are.equal("1", a:header("X-Test-A"))
      local b = assert(http.get(peer.url("/echo")))
      assert.are.equal("GET", b:header("X-Method"))
      assert.are.equal("", b.body)
      assert.is_nil(b:header("X-Test-A"))
      local c = assert(http.request { url = peer.url("/echo"), method = "POST", body = "small" })
      assert.are.equal("POST", c:header("X-Method"))
      assert.are.equal("small", c.body)
      assert.is_nil(c:header("X-Test-A"))
    end)
  end)

  it("sends a reused headers table as it is at each request, however it was changed", function()
    coord.run(function()
      local headers = { ["X-Test-A"] = "1", "X-Test-B: b" }
      local opts = { url = peer.url("/echo"), headers = headers }
      local function sent()
        local res = assert(http.request(opts))
        return res:header("X-Test-A"), res:header("X-Test-B"), res:header("X-Test-C")
      end
      assert.are.same({ "1", "b" }, { sent() })
      assert.are.same({ "1", "b" }, { sent() })
      headers["X-Test-A"] = "2"
      assert.are.same({ "2", "b" }, { sent() })
      headers["X-Test-A"] = 3
      assert.are.same({ "3", "b" }, { sent() })
      headers["X-Test-A"] = 3.0 -- equal to 3, sent as "3.0"
      assert.are.same({ "3.0", "b" }, { sent() })
      headers[1] = nil
      assert.are.same({ "3.0" }, { sent() })
      headers["X-Test-C"] = "c"
      assert.are.same({ "3.0", nil, "c" }, { sent() })
      headers["X-Test-A"] = nil
      assert.are.same({ nil, nil, "c" }, { sent() })
      headers["X-Test-C"] = "bad\r\nX-Evil: 1"
      assert.has_error(function() http.request(opts) end)
    end)
  end)

  it("gives a request after a failed, timed-out or canceled one its own result", function()
    coord.run(function()
      local _, err = http.get(peer.url("/garbage"))
      assert.are.equal("protocol", err.kind)
      local ok = assert(http.get(peer.url("/hello")))
      assert.are.equal(200, ok.status)
      assert.are.equal("hello", ok.body)
      local _, terr = http.get(peer.url("/stall?id=reuse1"), { timeout = 0.1 })
      assert.are.equal("timeout", terr.kind)
      assert.are.equal("hello", assert(http.get(peer.url("/hello"))).body)
      local v, cerr = coord.timeout(0.05, http.get, peer.url("/stall?id=reuse2"))
      assert.is_nil(v)
      assert.are.equal("timeout", cerr.kind)
      local again = assert(http.get(peer.url("/id?n=7")))
      assert.are.equal("7", again.body)
    end)
  end)

  it("keeps neither the coroutine nor the request body of a finished request alive", function()
    local weak = setmetatable({}, { __mode = "v" })
    collectgarbage()
    local before = collectgarbage("count")
    coord.run(function()
      local t = coord.spawn(function()
        assert(http.post(peer.url("/echo"), ("x"):rep(8 << 20)))
      end)
      weak.co = t.co
      assert(t:join())
    end)
    collectgarbage()
    collectgarbage()
    assert.is_nil(weak.co)
    -- strings stay in weak tables: the 8 MiB body is seen in the heap's size instead
    local kept = collectgarbage("count") - before
    assert.is_true(kept < 2048, ("%.0f KiB still allocated"):format(kept))
  end)

  it("keeps concurrent requests apart while their objects are recycled", function()
    local bodies = coord.run(function()
      local out = {}
      for round = 1, 3 do
        local fns = {}
        for i = 1, 20 do
          local n = round * 100 + i
          fns[i] = function()
            out[n] = assert(http.get(peer.url(("/id?n=%d&delay_ms=%d"):format(n, (i * 7) % 30)))).body
          end
        end
        coord.gather(table.unpack(fns))
      end
      return out
    end)
    for round = 1, 3 do
      for i = 1, 20 do
        local n = round * 100 + i
        assert.are.equal(tostring(n), bodies[n])
      end
    end
  end)
end)
