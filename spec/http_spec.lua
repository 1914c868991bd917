-- coord.http against a local fault-injecting peer (spec/peer): replies, failures, cancellation.
local coord = require "coord"
local helpers = require "helpers"
local http = coord.http

describe("coord.http", function()
  local peer
  setup(function() peer = helpers.start_peer() end)
  teardown(function() peer.stop() end)

  it("keeps sleeps on time while idle transfers are in flight", function()
    -- idle transfers leave curl's next timer seconds away; the loop must still wake for
    -- the coroutines' own timers
    local late = 0
    coord.run(function()
      local stalls = {}
      for i = 1, 5 do
        stalls[i] = coord.spawn(function() return http.get(peer.url("/stall?id=late" .. i), { timeout = 0 }) end)
      end
      local function sleeper(i)
        for r = 1, 10 do
          assert(http.get(peer.url(("/id?n=%d&delay_ms=%d"):format(r, i * 7 % 50))))
          local t0 = coord.now()
          coord.sleep(0.3)
          late = math.max(late, coord.now() - t0 - 0.3)
        end
      end
      local fns = {}
      for i = 1, 10 do fns[i] = function() sleeper(i) end end
      coord.gather(table.unpack(fns))
      for i = 1, 5 do stalls[i]:cancel() end
    end)
    assert.is_true(late < 1, ("a sleep was %.2f s late"):format(late))
  end)

  it("GETs a reply with status, lower-cased headers and body", function()
    local res = coord.run(function() return http.get(peer.url("/hello")) end)
    assert.are.equal(200, res.status)
    assert.are.equal("hello", res.body)
    assert.are.equal("text/plain", res.headers["content-type"])
  end)

  it("blocks and returns the reply when called outside any coroutine", function()
    local res, err = http.get(peer.url("/hello"))
    assert.is_nil(err)
    assert.are.equal("hello", res.body)
  end)

  it("sends method, headers and a binary body, and keeps repeated headers", function()
    local all = {}
    for i = 0, 255 do all[#all + 1] = string.char(i) end
    local body = table.concat(all):rep(64)
    local res = coord.run(function()
      return http.request { url = peer.url("/echo"), method = "PUT", body = body,
                            headers = { ["X-Test-One"] = "1", "X-Test-Two: two" } }
    end)
    assert.are.equal(200, res.status)
    assert.are.equal(body, res.body)
    assert.are.equal("PUT", res.headers["x-method"])
    assert.are.equal("1", res.headers["x-test-one"])
    assert.are.equal("two", res.headers["x-test-two"])
    assert.are.equal("a, b", res.headers["x-multi"])
  end)

  it("returns any status as a response, and an http error for an unexpected one", function()
    local res = http.get(peer.url("/status?code=404&body=missing"))
    assert.are.equal(404, res.status)
    assert.are.equal("missing", res.body)
    local v, err = http.get(peer.url("/status?code=503&body=down"), { expect = { 200, 404 } })
    assert.is_nil(v)
    assert.are.equal("http", err.kind)
    assert.are.equal(503, err.status)
    assert.matches("unexpected HTTP status 503: down", tostring(err))
  end)

  it("completes 1000 concurrent requests from 1000 coroutines with the right bodies", function()
    local wrong, errs = 0, 0
    coord.run(function()
      for i = 1, 1000 do
        coord.spawn(function()
          local res, err = http.get(peer.url("/id?n=" .. i .. "&delay_ms=" .. (i % 7) * 5))
          if not res then errs = errs + 1 elseif res.body ~= tostring(i) then wrong = wrong + 1 end
        end)
      end
    end)
    coord.run()
    assert.are.same({ 0, 0 }, { wrong, errs })
  end)

  it("tells connection refused, unresolvable host, malformed URL and timeout apart", function()
    local kinds = coord.run(function()
      local out = {}
      local _, e1 = http.get("http://127.0.0.1:1/")
      local _, e2 = http.get("http://no-such-host.invalid/")
      local _, e3 = http.get("http://[::1/")
      local _, e4 = http.get(peer.url("/slow?ms=2000"), { timeout = 0.1 })
      for _, e in ipairs({ e1, e2, e3, e4 }) do out[#out + 1] = e.kind end
      return out
    end)
    assert.are.same({ "connect", "resolve", "protocol", "timeout" }, kinds)
  end)

  it("says whether a failed request may have left this process (maybe_applied)", function()
    local e = coord.run(function()
      local out = {}
      _, out.refused = http.post("http://127.0.0.1:1/", "x")
      _, out.timeout = http.post(peer.url("/stall?id=ma1"), "x", { timeout = 0.2 })
      _, out.garbage = http.post(peer.url("/garbage"), "x")
      _, out.get_garbage = http.get(peer.url("/garbage"))
      return out
    end)
    assert.are.equal("connect", e.refused.kind)
    assert.is_nil(e.refused.maybe_applied)
    assert.are.equal("timeout", e.timeout.kind) -- a timeout stays one, but it was sent
    assert.is_true(e.timeout.maybe_applied)
    assert.are.equal("unknown", e.garbage.kind) -- a POST is not sent again: outcome unknown
    assert.is_true(e.garbage.maybe_applied)
    assert.are.equal("protocol", e.garbage.cause)
    assert.are.equal("protocol", e.get_garbage.kind) -- a GET keeps its kind
    assert.is_true(e.get_garbage.maybe_applied)
  end)

  describe("through a proxy that drops the connection once the upstream has answered", function()
    local proxy
    setup(function() proxy = helpers.start_peer { upstream = peer.port } end)
    teardown(function() proxy.stop() end)

    -- Arms a drop for path, then leaves an idle keep-alive connection for the next request
    -- (the control calls close theirs). Returns how often path has arrived so far.
    local function armed(path)
      proxy.arm(path)
      local n = proxy.count(path)
      assert.are.equal("hello", assert(http.get(proxy.url("/hello"))).body)
      return n
    end

    it("never sends a POST again: outcome unknown, and it arrived once", function()
      coord.run(function()
        local before = armed("/echo")
        local res, err = http.post(proxy.url("/echo"), "once")
        assert.is_nil(res)
        assert.are.equal("unknown", err.kind)
        assert.is_true(err.maybe_applied)
        assert.are.equal("closed", err.cause)
        assert.are.equal(before + 1, proxy.count("/echo"))
      end)
    end)

    it("lets libcurl send a GET, or a request with resend = true, again", function()
      coord.run(function()
        local before = armed("/echo")
        local res = assert(http.request { url = proxy.url("/echo"), method = "PUT", body = "twice", resend = true })
        assert.are.equal("twice", res.body)
        assert.are.equal(before + 2, proxy.count("/echo"))
        before = armed("/id")
        assert.are.equal("7", assert(http.get(proxy.url("/id?n=7"))).body)
        assert.are.equal(before + 2, proxy.count("/id"))
      end)
    end)

    it("keeps working after many drops on the same pooled handles", function()
      -- libcurl counts its re-sends per easy handle for the handle's whole life
      coord.run(function()
        for i = 1, 8 do
          armed("/id")
          local res, err = http.get(proxy.url("/id?n=" .. i))
          assert.is_truthy(res, tostring(err))
          assert.are.equal(tostring(i), res.body)
        end
      end)
    end)
  end)

  it("reports truncated, garbage and reset replies as errors", function()
    local e = coord.run(function()
      local out = {}
      for _, path in ipairs({ "/truncate", "/garbage", "/reset" }) do
        local res, err = http.get(peer.url(path))
        out[path] = err and err.kind or ("status " .. tostring(res and res.status))
      end
      return out
    end)
    assert.are.equal("protocol", e["/truncate"])
    assert.are.equal("protocol", e["/garbage"])
    assert.are.equal("closed", e["/reset"])
  end)

  it("cancels the transfer when coord.timeout expires: the peer sees the connection closed", function()
    local v, err = coord.run(function()
      return coord.timeout(0.05, http.get, peer.url("/stall?id=t1"))
    end)
    assert.is_nil(v)
    assert.are.equal("timeout", err.kind)
    local res = http.get(peer.url("/closed?id=t1&timeout_ms=5000"))
    assert.are.equal("closed", res.body)
    assert.are.equal(0, require("coord.core").inflight())
  end)

  it("cancels the transfer when its coroutine is closed", function()
    local co = coroutine.create(function() http.get(peer.url("/stall?id=t2")) end)
    assert.is_true(coroutine.resume(co))
    assert.are.equal("seen", http.get(peer.url("/seen?id=t2&timeout_ms=5000")).body)
    assert.are.equal(1, require("coord.core").inflight())
    coroutine.close(co)
    local res = http.get(peer.url("/closed?id=t2&timeout_ms=5000"))
    assert.are.equal("closed", res.body)
    assert.are.equal(0, require("coord.core").inflight())
  end)

  it("a waiting coroutine that nobody references does not crash when the reply comes", function()
    do
      local co = coroutine.create(function() http.get(peer.url("/slow?ms=20")) end)
      coroutine.resume(co)
    end
    collectgarbage()
    coord.run()
    collectgarbage()
    assert.are.equal(0, require("coord.core").inflight())
  end)

  it("raises on wrong argument types and bad options", function()
    assert.has_error(function() http.request("http://x") end)
    assert.has_error(function() http.request({}) end, "bad request option 'url' (string expected, got nil)")
    assert.has_error(function() http.request({ url = "http://x", timeout = "soon" }) end)
    assert.has_error(function() http.request({ url = "http://x", headers = { ["Bad\r\nName"] = "v" } }) end)
    assert.has_error(function() http.request({ url = "http://x", http_version = "3" }) end)
    for _, m in ipairs({ "GET\r\nX-Injected: 1", "GE T", "PUT\n", "", "G\0T", "P\127" }) do
      assert.has_error(function() http.request({ url = "http://x", method = m }) end)
    end
    assert.has_error(function() http.request({ url = "http://x", method = "GET /x HTTP/1.1" }) end,
      "bad request option 'method' (an HTTP token expected, got character 0x20)")
    assert.has_error(function() http.request({ url = "http://x", resend = "yes" }) end)
    assert.has_error(function() http.post("http://x", 42) end)
    assert.are.equal(0, require("coord.core").inflight())
  end)

  it("fails a request whose options libcurl refuses, on a pooled handle too, and goes on", function()
    -- libcurl refuses a URL over 8 MB (curl_easy_setopt fails): the request fails with that,
    -- on the handle the first request left in the pool, which then serves the third
    assert.are.equal("hello", assert(http.get(peer.url("/hello"))).body)
    local long = peer.url("/hello?pad=" .. ("a"):rep(8 * 1024 * 1024))
    for _, opts in ipairs { {}, { stream = true } } do
      local res, err
      if opts.stream then
        local s <close> = http.stream { url = long }
        res, err = s:response()
      else
        res, err = http.get(long)
      end
      assert.is_nil(res)
      assert.are.equal("protocol", err.kind)
      assert.matches("^curl_easy_setopt failed: ", err.message)
      assert.is_nil(err.maybe_applied)
    end
    assert.are.equal("hello", assert(http.get(peer.url("/hello"))).body)
    assert.are.equal(0, require("coord.core").inflight())
  end)

  it("lua_close with requests in flight is clean", function()
    local ok, code, out = helpers.run_lua(([[
      local coord = require "coord"
      for i = 1, 20 do
        coord.spawn(function() coord.http.get("http://127.0.0.1:%d/stall?id=close" .. i) end)
      end
      local s = coord.http.stream { url = "http://127.0.0.1:%d/flood?id=closeflood&lines=100000&len=100" }
      coord.step(0.05)
      coord.step(0.05)
      print("in flight " .. require("coord.core").inflight())
    ]]):format(peer.port, peer.port))
    assert.is_true(ok, out)
    assert.are.equal(0, code)
    assert.matches("in flight 21", out)
  end)
end)
