-- coord.consul watches against a real Consul dev agent: blocking loops, their rules, sharing.
local coord = require "coord"
local consul_mod = require "coord.consul"
local servers = require "servers"

-- Requests `method url_part...` the agent logged as finished (it runs with -log-level=debug).
local function logged(server, method, url_part)
  local n = 0
  for line in io.lines(server.dir .. "/consul.log") do
    if line:find("Request finished: method=" .. method .. " url=" .. url_part, 1, true) then n = n + 1 end
  end
  return n
end

local function logged_gets(server, url_part)
  return logged(server, "GET", url_part)
end

describe("coord.consul watch", function()
  local server, c
  setup(function()
    server = servers.consul { args = "-log-level=debug" }
    c = consul_mod.new { address = server.address }
  end)
  teardown(function() server:stop() end)

  it("sees every change of a key written 200 times, possibly coalesced, ending on the final value", function()
    local seen = coord.run(function()
      local seen = {}
      local watcher = coord.spawn(function()
        for e in c.kv:watch("w200") do
          seen[#seen + 1] = e and tonumber(e.value) or 0
          if e and e.value == "200" then return end
        end
      end)
      for i = 1, 200 do assert(c.kv:put("w200", tostring(i))) end
      assert(coord.timeout(20, watcher.join, watcher))
      return seen
    end)
    assert.are.equal(200, seen[#seen])
    for i = 2, #seen do assert.is_true(seen[i] > seen[i - 1], "values delivered out of order or twice") end
  end)

  it("delivers only changes of its own key, not replies caused by other keys", function()
    local seen = coord.run(function()
      local seen, q = {}, coord.queue()
      local watcher = coord.spawn(function()
        for e in c.kv:watch("own/a", { wait = 1 }) do
          seen[#seen + 1] = e and e.value or false
          q:put(true)
          if e and e.value == "last" then return end
        end
      end)
      q:get()
      for i = 1, 5 do assert(c.kv:put("own/b", tostring(i))) end
      coord.sleep(1.5) -- at least one wait expires without a change
      assert(c.kv:put("own/a", "last"))
      assert(coord.timeout(10, watcher.join, watcher))
      return seen
    end)
    assert.are.same({ false, "last" }, seen)
  end)

  it("watches a prefix with recurse = true", function()
    local got = coord.run(function()
      local watcher = coord.spawn(function()
        for entries in c.kv:watch("tree/", { recurse = true }) do
          if #entries == 2 then return entries end
        end
      end)
      assert(c.kv:put("tree/x", "1"))
      assert(c.kv:put("tree/y", "2"))
      local ok, entries = assert(coord.timeout(10, watcher.join, watcher))
      assert.is_true(ok)
      return entries
    end)
    assert.are.equal("tree/x", got[1].key)
    assert.are.equal("2", got[2].value)
  end)

  it("is closed by another coroutine while blocked, and by leaving a <close> scope", function()
    coord.run(function()
      local w = c.kv:watch("closeme")
      local ended = coord.spawn(function()
        local n = 0
        for _ in w do n = n + 1 end
        return n
      end)
      coord.sleep(0.3) -- the watcher now blocks in a 5 minute query
      local t0 = coord.now()
      w:close()
      local ok, n = assert(coord.timeout(2, ended.join, ended))
      assert.is_true(ok)
      assert.are.equal(1, n)
      assert.is_true(coord.now() - t0 < 1)
      local w2
      do
        local w <close> = c.kv:watch("closeme")
        w2 = w
        assert.is_false((w()))
      end
      assert.is_true(w2.closed)
    end)
  end)

  it("recovers by itself when the agent restarts and its index goes backwards", function()
    coord.run(function()
      local q = coord.queue()
      local w = c.kv:watch("restart/k", { wait = 2 })
      local watcher = coord.spawn(function()
        for e, err, meta in w do
          assert(err == nil)
          q:put({ e and e.value or false, meta.index })
        end
      end)
      assert(c.kv:put("restart/k", "before"))
      local got
      repeat got = assert(coord.timeout(10, q.get, q)) until got[1] == "before"
      local old = got[2]
      server:restart()
      assert(c.kv:put("restart/k", "after"))
      local _, _, meta = c.kv:get("restart/k")
      assert.is_true(meta.index < old, "the new agent's index should be below the old one")
      repeat got = assert(coord.timeout(20, q.get, q)) until got[1] == "after"
      w:close()
      watcher:join()
    end)
  end)

  it("keeps a flapping key from driving the loop past its rate limit", function()
    local rate, burst, period, writes = 2, 2, 3, 60
    local requests, elapsed = coord.run(function()
      local w = c.kv:watch("flap", { rate = rate, burst = burst })
      local deliveries = 0
      local watcher = coord.spawn(function()
        for _ in w do deliveries = deliveries + 1 end
      end)
      -- flap for at least `period` seconds and `writes` writes (a slow machine, or valgrind,
      -- takes longer for the writes; the bound below uses the time it really took)
      local t0, i = coord.now(), 0
      while (coord.now() - t0 < period or i < writes) and coord.now() - t0 < 60 do
        i = i + 1
        assert(c.kv:put("flap", tostring(i)))
      end
      local elapsed = coord.now() - t0
      assert.is_true(i >= writes, "the writer only managed " .. i .. " writes")
      local requests = w:requests()
      w:close()
      watcher:join()
      assert.is_true(deliveries <= requests)
      return requests, elapsed
    end)
    -- the bucket allows burst reads at once, then rate per second
    local bound = burst + rate * elapsed + 1
    assert.is_true(requests <= bound, ("%d reads in %.1f s"):format(requests, elapsed))
    assert.is_true(requests >= 3)
    -- the agent saw no more than the client counted (the last one may still be unlogged)
    local agent = logged_gets(server, "/v1/kv/flap")
    assert.is_true(agent <= requests and agent >= requests - 1, "agent logged " .. agent .. ", client sent " .. requests)
  end)

  it("follows the index rules: reset when it goes backwards, at least 1", function()
    -- a read function of our own reports a scripted sequence of indexes
    local script = { { "a", 5 }, { "a", 7 }, { "b", 3 }, { "c", 0 }, { "d", 9 } }
    local sent = {}
    local out = coord.run(function()
      local i, out = 0, {}
      local fn = function(o)
        sent[#sent + 1] = o.index or 0
        i = i + 1
        local s = script[i]
        return s[1], nil, { index = s[2] }
      end
      for v in c:watch(fn, { burst = 10, rate = 100 }) do
        out[#out + 1] = v
        if v == "d" then break end
      end
      return out
    end)
    assert.are.same({ "a", "b", "c", "d" }, out)
    -- 0 (first read), 5, 7, then 3 < 7: reset to 0; then 0 is sent as 1
    assert.are.same({ 0, 5, 7, 0, 1 }, sent)
  end)

  it("backs off exponentially while the agent cannot be reached", function()
    local port = servers.free_port()
    local dead = consul_mod.new { address = "127.0.0.1:" .. port }
    local n = coord.run(function()
      local w <close> = dead.kv:watch("k", { min_backoff = 0.1, max_backoff = 0.4 })
      local t = coord.spawn(function() for _ in w do end end)
      coord.sleep(2)
      local n = w:requests()
      w:close()
      t:join()
      return n
    end)
    -- delays (each half fixed, half random) 0.1, 0.2, 0.4, 0.4, ...: between 6 and 11 reads
    assert.is_true(n >= 5 and n <= 12, n .. " reads in 2 s")
  end)

  it("ends at the first failed read with retry = false, keeping the error", function()
    local dead = consul_mod.new { address = "127.0.0.1:" .. servers.free_port() }
    coord.run(function()
      local w <close> = dead.kv:watch("k", { retry = false })
      local n = 0
      assert(coord.timeout(10, function() for _ in w do n = n + 1 end return true end))
      assert.are.equal(0, n)
      assert.are.equal(1, w:requests())
      assert.are.equal("connect", w.error.kind)
    end)
    assert.has_error(function() c.kv:watch("k", { retry = "no" }) end)
  end)

  it("retries a plain read on a 500, and never a write", function()
    local _, err = c.kv:get("retry/r", { dc = "nowhere" })
    assert.are.equal(500, err.status)
    assert.are.equal(3, logged_gets(server, "/v1/kv/retry/r?dc=nowhere"))
    local _, err2 = c.kv:put("retry/w", "x", { dc = "nowhere" })
    assert.are.equal(500, err2.status)
    assert.are.equal(1, logged(server, "PUT", "/v1/kv/retry/w?dc=nowhere"))
    local _, err3 = c.kv:get("retry/once", { dc = "nowhere", retries = 0 })
    assert.are.equal(500, err3.status)
    assert.are.equal(1, logged_gets(server, "/v1/kv/retry/once?dc=nowhere"))
  end)

  it("takes the new values when a restarted agent gives rewritten keys the same indexes", function()
    local own <close> = servers.consul { fixed_indexes = true }
    local cl = consul_mod.new { address = own.address }
    local keys = { "same/a", "same/b", "same/c" }
    local function write(tag) return own:write_at_fixed_indexes(cl, keys, tag) end
    coord.run(function()
      local before = write("old")
      -- one watch of each kind, each on its own key: plain entry, raw value, shared entry
      local ws = {
        { w = cl.kv:watch("same/a", { max_backoff = 0.5 }) },
        { w = cl.kv:watch("same/b", { max_backoff = 0.5, raw = true }) },
        { w = cl.kv:watch("same/c", { max_backoff = 0.5, share = "same/" }) },
      }
      local q = coord.queue()
      for i, x in ipairs(ws) do
        x.task = coord.spawn(function()
          for v in x.w do q:put { i, type(v) == "table" and v.value or v } end
        end)
      end
      local last = {}
      local function until_values(tag)
        local function done()
          for i = 1, #ws do if last[i] ~= tag .. i then return false end end
          return true
        end
        while not done() do
          local got = assert(coord.timeout(30, q.get, q))
          last[got[1]] = got[2]
        end
      end
      until_values("old")
      own:restart()
      local after = write("new")
      assert.are.same(before, after) -- what this test is about
      until_values("new")
      for _, x in ipairs(ws) do
        x.w:close()
        x.task:join()
      end
    end)
  end)

  describe("shared prefix queries", function()
    it("let many key watches share one query, each seeing only its own key", function()
      local n = 50
      local results, groups = coord.run(function()
        local results, ready = {}, coord.queue()
        local tasks = {}
        for i = 1, n do
          tasks[i] = coord.spawn(function()
            local mine = {}
            for e in c.kv:watch("shared/k" .. i, { share = "shared/" }) do
              mine[#mine + 1] = e and e.value or false
              if #mine == 1 then ready:put(i) end
              if e and e.value == "v" .. i then break end
            end
            results[i] = mine
          end)
        end
        for _ = 1, n do assert(coord.timeout(10, ready.get, ready)) end
        local groups = 0
        for _ in pairs(c._shared) do groups = groups + 1 end
        for i = 1, n do assert(c.kv:put("shared/k" .. i, "v" .. i)) end
        for i = 1, n do assert(coord.timeout(20, tasks[i].join, tasks[i])) end
        return results, groups
      end)
      assert.are.equal(1, groups)
      for i = 1, n do assert.are.same({ false, "v" .. i }, results[i]) end
      assert.is_nil(next(c._shared), "the shared query should stop with its last watcher")
      assert.are.equal(0, logged_gets(server, "/v1/kv/shared/k"))
    end)

    it("delivers value strings with raw = true, sharing the query with entry watches", function()
      local raw, entries, groups = coord.run(function()
        local raw, entries = {}, {}
        local wr <close> = c.kv:watch("rawshare/k", { share = "rawshare/", raw = true })
        local we <close> = c.kv:watch("rawshare/k", { share = "rawshare/" })
        local groups = 0
        for _ in pairs(c._shared) do groups = groups + 1 end
        raw[1], entries[1] = wr(), we()
        assert(c.kv:put("rawshare/k", "one"))
        raw[2], entries[2] = wr(), we()
        return raw, entries, groups
      end)
      assert.are.same({ false, "one" }, raw)
      assert.are.equal(1, groups)
      assert.is_false(entries[1])
      assert.are.equal("one", entries[2].value)
    end)

    it("takes the key's parent with share = true and refuses a share that is not a prefix", function()
      coord.run(function()
        local w <close> = c.kv:watch("par/ent/k", { share = true })
        assert.is_false((w()))
        assert.is_truthy(next(c._shared):find("^par/ent/\0"))
      end)
      assert.has_error(function() c.kv:watch("a/b", { share = "x/" }) end)
    end)
  end)
end)
