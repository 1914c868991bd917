-- etcd watches against real etcd 3.4 and 3.5: keys, prefixes and ranges, history, filters,
-- progress, fragments, compaction, cancellation, slow readers and many watches on one stream.
local coord = require "coord"
local core = require "coord.core"
local servers = require "servers"
local sup = require "etcd_watch_support"
local watch = require "coord.etcd.watch"
local etcd_client = require "etcd_client"

-- Runs fn in the loop, then lets the loop finish what closing the watches queued (their
-- connections close), so that stopping the server does not wait for them.
local function run(fn)
  coord.run(fn)
  coord.run()
end

-- Waits (bounded) until the server has confirmed the watch; returns its creation revision.
local function ready(w)
  local rev, err = coord.timeout(10, w.ready, w)
  assert(rev, tostring(err))
  return rev
end

local function values(evs)
  local out = {}
  for i, ev in ipairs(evs) do out[i] = ev.type .. " " .. ev.kv.key .. "=" .. ev.kv.value end
  return out
end

for _, version in ipairs { "3.4", "3.5" } do
  describe("etcd watch on etcd " .. version, function()
    local srv
    setup(function()
      srv = servers.etcd { version = version, args = "--experimental-watch-progress-notify-interval=300ms" }
    end)
    teardown(function() if srv then srv:stop() end end)

    it("sees the puts and deletes of one key, in order, with exact integers", function()
      run(function()
        local c = sup.client(srv)
        local w <close> = c:watch("one")
        local created = ready(w)
        assert.are.equal("integer", math.type(created))
        local r1 = sup.put(srv, "one", "v1")
        sup.put(srv, "one-more", "x")
        sup.put(srv, "on", "x")
        local r2 = sup.delete(srv, "one")
        local evs, err = sup.take(w, 2)
        assert.is_nil(err)
        assert.are.same({ "put one=v1", "delete one=" }, values(evs))
        assert.are.equal(r1, evs[1].kv.mod_revision)
        assert.are.equal(r1, evs[1].kv.create_revision)
        assert.are.equal(1, evs[1].kv.version)
        assert.are.equal(r2, evs[2].kv.mod_revision)
        for _, f in ipairs { "mod_revision", "create_revision", "version", "lease" } do
          assert.are.equal("integer", math.type(evs[1].kv[f]))
        end
        assert.is_nil(evs[1].prev_kv)
        assert.are.equal(r2, w.revision)
      end)
    end)

    it("gives up a new stream that answers nothing, and opens another once the server is back", function()
      run(function()
        local c = sup.client(srv)
        local proc = srv.members[1].proc
        proc:pause() -- its kernel accepts connections; etcd answers nothing until SIGCONT
        local w <close> = c:watch("grace/k")
        local gave_up, err = pcall(servers.until_true, "the unanswered stream given up", function()
          local e = watch.stats(c).last_error
          return e ~= nil and tostring(e):find("unanswered", 1, true) ~= nil
        end, 20)
        proc:send("CONT")
        assert(gave_up, tostring(err))
        assert.matches("watch stream unanswered 5 s after it opened", tostring(watch.stats(c).last_error), 1, true)
        ready(w)
        local rev = sup.put(srv, "grace/k", "back")
        local evs = assert.is_table((sup.take(w, 1)))
        assert.are.same({ "put grace/k=back" }, values(evs))
        assert.are.equal(rev, evs[1].kv.mod_revision)
        assert.is_true(watch.stats(c).streams >= 2)
      end)
    end)

    it("watches a prefix and a range, and strips a namespace prefix", function()
      run(function()
        local c = sup.client(srv)
        local ns = sup.client(srv, { prefix = "ns/" })
        local wp <close> = c:watch("pre/", { prefix = true })
        local wr <close> = c:watch("rng/b", { range_end = "rng/d" })
        local wn <close> = ns:watch("k", { prefix = true })
        ready(wp); ready(wr); ready(wn)
        for _, k in ipairs { "pre/a", "pre", "pre/b/c", "rng/a", "rng/b", "rng/c", "rng/d", "ns/k1", "k2", "ns/k/x" } do
          sup.put(srv, k, "v")
        end
        local evs = assert.is_table((sup.take(wp, 2)))
        assert.are.same({ "put pre/a=v", "put pre/b/c=v" }, values(evs))
        evs = sup.take(wr, 2)
        assert.are.same({ "put rng/b=v", "put rng/c=v" }, values(evs))
        evs = sup.take(wn, 2)
        assert.are.same({ "put k1=v", "put k/x=v" }, values(evs))
        -- nothing else is queued
        local more = coord.timeout(0.3, wp.next, wp)
        assert.is_nil(more)
      end)
    end)

    it("replays history from a start revision, with prev_kv", function()
      run(function()
        local c = sup.client(srv)
        local r1 = sup.put(srv, "hist", "a")
        sup.put(srv, "hist", "b")
        sup.delete(srv, "hist")
        local w <close> = c:watch("hist", { start_revision = r1, prev_kv = true })
        local evs = sup.take(w, 3)
        assert.are.same({ "put hist=a", "put hist=b", "delete hist=" }, values(evs))
        assert.is_nil(evs[1].prev_kv)
        assert.are.equal("a", evs[2].prev_kv.value)
        assert.are.equal("b", evs[3].prev_kv.value)
        assert.are.equal(r1, evs[2].prev_kv.mod_revision)
        -- `revision` is the same option
        local w2 <close> = c:watch("hist", { revision = r1 + 1 })
        assert.are.same({ "put hist=b", "delete hist=" }, values((sup.take(w2, 2))))
      end)
    end)

    it("filters out puts or deletes", function()
      run(function()
        local c = sup.client(srv)
        local r = sup.put(srv, "filt", "1")
        sup.delete(srv, "filt")
        sup.put(srv, "filt", "2")
        sup.delete(srv, "filt")
        local np <close> = c:watch("filt", { start_revision = r, no_put = true })
        local nd <close> = c:watch("filt", { start_revision = r, no_delete = true })
        assert.are.same({ "delete filt=", "delete filt=" }, values((sup.take(np, 2))))
        assert.are.same({ "put filt=1", "put filt=2" }, values((sup.take(nd, 2))))
      end)
    end)

    it("delivers progress notifications as progress events", function()
      run(function()
        local c = sup.client(srv)
        local w <close> = c:watch("quiet", { progress_notify = true })
        ready(w)
        local r = sup.put(srv, "elsewhere", "x")
        -- the server sends one every 300 ms; the first after the put carries its revision
        local ev
        for _ = 1, 20 do
          ev = assert(coord.timeout(5, w.next, w))
          assert.are.equal("progress", ev.type)
          assert.are.equal("integer", math.type(ev.revision))
          if ev.revision >= r then break end
        end
        assert.are.equal(r, ev.revision)
        assert.are.equal(r, w.revision)
      end)
    end)

    it("reassembles revisions larger than the gateway's message limit", function()
      run(function()
        local c = sup.client(srv)
        local big = ("x"):rep(100 * 1024)
        -- one revision of 1.4 MB; with prev_kv its event batch is twice that
        local kvs = {}
        for i = 1, 14 do kvs[i] = { ("frag/%02d"):format(i), big .. i } end
        local r1 = sup.put_many(srv, kvs)
        for i = 1, 14 do kvs[i][2] = big .. "b" .. i end
        local r2 = sup.put_many(srv, kvs)
        local before = watch.stats(c).fragments
        local w <close> = c:watch("frag/", { prefix = true, prev_kv = true, start_revision = r1 })
        local evs, err = sup.take(w, 28, 20)
        assert.is_nil(err)
        assert.are.equal(28, #evs)
        for i = 1, 28 do
          local n = (i - 1) % 14 + 1
          local ev = evs[i]
          assert.are.equal(("frag/%02d"):format(n), ev.kv.key)
          assert.are.equal(i <= 14 and r1 or r2, ev.kv.mod_revision)
          assert.are.equal(i <= 14 and big .. n or big .. "b" .. n, ev.kv.value)
          if i > 14 then assert.are.equal(big .. n, ev.prev_kv.value) end
        end
        assert.is_true(watch.stats(c).fragments > before, "no fragmented result was seen")
      end)
    end)

    it("sees every revision of 1,000 puts exactly once, in order", function()
      run(function()
        local c = sup.client(srv)
        local w <close> = c:watch("seq/", { prefix = true })
        ready(w)
        local n = 1000
        local writer = coord.spawn(function()
          local first
          for i = 1, n do
            local r = sup.put(srv, "seq/" .. (i % 7), tostring(i))
            first = first or r
          end
          return first
        end)
        local evs, err = sup.take(w, n, 60)
        assert.is_nil(err)
        local _, first = writer:join()
        assert.are.equal(n, #evs)
        for i = 1, n do
          assert.are.equal(first + i - 1, evs[i].kv.mod_revision)
          assert.are.equal(tostring(i), evs[i].kv.value)
        end
        assert.is_nil(coord.timeout(0.3, w.next, w))
      end)
    end)

    it("reports a compacted start revision as a 'compacted' error", function()
      run(function()
        local c = sup.client(srv)
        local r1 = sup.put(srv, "cmp", "1")
        local r2 = sup.put(srv, "cmp", "2")
        sup.call(srv, "/v3/kv/compaction", { revision = r2, physical = true })
        local w <close> = c:watch("cmp", { start_revision = r1 })
        local ev, err = coord.timeout(10, w.next, w)
        assert.is_nil(ev)
        assert.are.equal("compacted", err.kind)
        assert.are.equal(r2, err.compact_revision)
        assert.are.equal("integer", math.type(err.compact_revision))
        -- the iterator form ends and leaves the error
        local n = 0
        for _ in w:events() do n = n + 1 end
        assert.are.equal(0, n)
        assert.are.equal(err, w.error)
        assert.are.equal(0, watch.stats(c).watches)
      end)
    end)

    it("closes a watch made in a generic for when the loop is left, and leaves a held one open", function()
      run(function()
        local c = sup.client(srv)
        local r = sup.put(srv, "gen/a", "1")
        sup.put(srv, "gen/a", "2")
        local opts = { start_revision = r }
        assert.equal(0, watch.stats(c).watches)
        local got = assert(coord.timeout(10, function()
          -- break
          local n = 0
          for ev in c:watch("gen/a", opts) do
            n = n + 1
            assert.equal("1", ev.kv.value)
            assert.equal(1, watch.stats(c).watches)
            break
          end
          assert.equal(1, n)
          assert.equal(0, watch.stats(c).watches)
          -- return
          local function first()
            for ev in c:watch("gen/a", opts) do return ev end
          end
          assert.equal("1", first().kv.value)
          assert.equal(0, watch.stats(c).watches)
          -- an error
          local ok, err = pcall(function()
            for _ in c:watch("gen/a", opts) do error("boom", 0) end
          end)
          assert.is_false(ok)
          assert.equal("boom", err)
          assert.equal(0, watch.stats(c).watches)
          -- a watch held in a variable stays open: for ev in w, then w:events()
          local w <close> = c:watch("gen/a", opts)
          for ev in w do
            assert.equal("1", ev.kv.value)
            break
          end
          assert.equal(1, watch.stats(c).watches)
          local second
          for ev in w:events() do
            second = ev
            break
          end
          assert.equal("2", second.kv.value)
          assert.is_false(w.closed)
          assert.equal(1, watch.stats(c).watches)
          return true
        end))
        assert.is_true(got)
        assert.equal(0, watch.stats(c).watches)
      end)
    end)

    it("shares one server watch among identical watches, each with its own events and cancel", function()
      run(function()
        local c = sup.client(srv)
        -- counted by the hub: etcd's own count of watchers (etcd_debugging_mvcc_watcher_total)
        -- still holds the earlier tests' closed watches for a while, on both wires; the proxy
        -- spec counts etcd's watchers for shared watches
        local opts = { prefix = true, prev_kv = true }
        local a <close> = c:watch("sh/", opts)
        ready(a)
        local r1 = sup.put(srv, "sh/x", "1")
        assert.are.equal(r1, sup.take(a, 1)[1].kv.mod_revision)
        -- joins a's server watch at once; its events are those after a's so far
        local b <close> = c:watch("sh/", opts)
        assert.are.equal(r1, ready(b))
        local own <close> = c:watch("sh/", { prefix = true }) -- not identical (no prev_kv): a watch of its own
        ready(own)
        local st = watch.stats(c)
        assert.are.equal(3, st.watches)
        assert.are.equal(2, st.server_watches)
        local r2 = sup.put(srv, "sh/x", "2")
        local ea, eb, eo = sup.take(a, 1)[1], sup.take(b, 1)[1], sup.take(own, 1)[1]
        for _, ev in ipairs { ea, eb, eo } do assert.are.equal(r2, ev.kv.mod_revision) end
        assert.are.equal("1", ea.prev_kv.value)
        assert.are.equal("1", eb.prev_kv.value)
        ea.kv.value = "changed" -- each watch has event tables of its own
        assert.are.equal("2", eb.kv.value)
        -- a's cancel leaves b receiving; the server watch stays
        a:close()
        local r3 = sup.put(srv, "sh/y", "3")
        assert.are.equal(r3, sup.take(b, 1)[1].kv.mod_revision)
        assert.are.equal(r3, sup.take(own, 1)[1].kv.mod_revision)
        assert.are.equal(2, watch.stats(c).server_watches)
        -- the last member's cancel frees the server watch
        b:close()
        st = watch.stats(c)
        assert.are.equal(1, st.watches)
        assert.are.equal(1, st.server_watches)
        -- a watch made now is created anew, from now on
        local d <close> = c:watch("sh/", opts)
        local rd = ready(d)
        assert.is_true(rd >= r3)
        local r4 = sup.put(srv, "sh/x", "4")
        assert.are.equal(r4, sup.take(d, 1)[1].kv.mod_revision)
        -- share = false: a watch of its own even when identical
        local e <close> = c:watch("sh/", { prefix = true, prev_kv = true, share = false })
        ready(e)
        assert.are.equal(3, watch.stats(c).server_watches)
        own:close()
      end)
    end)

    it("lets a slow member of a shared watch go on alone without holding the others up", function()
      run(function()
        local c = sup.client(srv)
        local fast <close> = c:watch("shslow/", { prefix = true })
        local slow <close> = c:watch("shslow/", { prefix = true, buffer = 2 })
        ready(fast)
        ready(slow)
        assert.are.equal(1, watch.stats(c).server_watches)
        local revs = {}
        for i = 1, 6 do revs[i] = sup.put(srv, "shslow/" .. i, "v") end
        local function revisions(evs)
          local out = {}
          for i, ev in ipairs(evs) do out[i] = ev.kv.mod_revision end
          return out
        end
        local evs, err = sup.take(fast, 6)
        assert.is_nil(err)
        assert.are.same(revs, revisions(evs))
        evs, err = sup.take(slow, 6)
        assert.is_nil(err)
        assert.are.same(revs, revisions(evs))
        assert.is_true(watch.stats(c).pauses >= 1)
        local r7 = sup.put(srv, "shslow/7", "v")
        assert.are.equal(r7, sup.take(fast, 1)[1].kv.mod_revision)
        assert.are.equal(r7, sup.take(slow, 1)[1].kv.mod_revision)
      end)
    end)

    it("is canceled by close, <close> and coord.timeout", function()
      run(function()
        local c = sup.client(srv)
        -- close wakes a reader, whose loop ends without an error
        local w = c:watch("cancel")
        ready(w)
        local got = {}
        local reader = coord.spawn(function()
          for ev in w:events() do got[#got + 1] = ev end
          return w.error
        end)
        sup.put(srv, "cancel", "1")
        -- wait until the reader has the event, then close
        assert(coord.timeout(5, function()
          while #got == 0 do coord.sleep(0.01) end
          return true
        end))
        w:close()
        local ok, werr = reader:join()
        assert.is_true(ok)
        assert.is_nil(werr)
        assert.are.equal(1, #got)
        local ev, err = w:next()
        assert.is_nil(ev)
        assert.are.equal("closed", err.kind)
        w:close()
        -- the last watch gone, the stream is closed
        assert.are.equal(0, watch.stats(c).watches)
        assert.is_nil(watch.stats(c).connected)
        -- <close>
        local w2
        do
          local w3 <close> = c:watch("cancel")
          w2 = w3
          ready(w3)
        end
        assert.is_true(w2.closed)
        -- coord.timeout cancels the wait, not the watch
        local w4 <close> = c:watch("cancel")
        ready(w4)
        local none, terr = coord.timeout(0.2, w4.next, w4)
        assert.is_nil(none)
        assert.are.equal("timeout", terr.kind)
        sup.put(srv, "cancel", "2")
        local later = assert(coord.timeout(5, w4.next, w4))
        assert.are.equal("2", later.kv.value)
      end)
    end)

    it("pauses a watch whose reader is slow without losing or repeating events", function()
      run(function()
        local c = sup.client(srv)
        local slow <close> = c:watch("slow/", { prefix = true, buffer = 10 })
        local fast <close> = c:watch("slow/", { prefix = true })
        ready(slow); ready(fast)
        local n = 100
        local first
        for i = 1, n do
          local r = sup.put(srv, "slow/k", tostring(i))
          first = first or r
        end
        -- the other watch is not held up
        local fevs = sup.take(fast, n)
        assert.are.equal(n, #fevs)
        assert.is_true(#slow <= 10, "queued " .. #slow)
        assert.is_true(watch.stats(c).pauses >= 1)
        local sevs, err = sup.take(slow, n)
        assert.is_nil(err)
        assert.are.equal(n, #sevs)
        for i = 1, n do
          assert.are.equal(first + i - 1, sevs[i].kv.mod_revision)
          assert.are.equal(tostring(i), sevs[i].kv.value)
        end
        assert.is_nil(coord.timeout(0.3, slow.next, slow))
      end)
    end)

    it("carries 200 watches on one connection", function()
      run(function()
        local c = sup.client(srv)
        local port = srv.members[1].port
        c:get("warm-up") -- the client's own pooled connection
        local base = sup.connections(port)
        local base_streams = sup.watch_streams(srv)
        local ws = {}
        for i = 1, 200 do ws[i] = c:watch("many/" .. i) end
        for i = 1, 200 do ready(ws[i]) end
        -- the stream may take over the idle pooled connection or open one more
        local during = sup.connections(port)
        assert.is_true(during >= 1 and during <= base + 1, ("%d connections, %d before"):format(during, base))
        for b = 0, 1 do
          local kvs = {}
          for i = 1, 100 do kvs[i] = { "many/" .. (b * 100 + i), "v" .. (b * 100 + i) } end
          sup.put_many(srv, kvs)
        end
        for i = 1, 200 do
          local ev = assert(coord.timeout(5, ws[i].next, ws[i]))
          assert.are.equal("many/" .. i, ev.kv.key)
          assert.are.equal("v" .. i, ev.kv.value)
        end
        assert.are.equal(1, watch.stats(c).streams)
        assert.are.equal(base_streams + 1, sup.watch_streams(srv))
        during = sup.connections(port) -- the puts above may have opened a pooled connection
        for i = 1, 200 do ws[i]:close() end
        if etcd_client.grpc() then
          -- over gRPC the stream was one more stream on the calls' connection, which stays
          -- open for them (doc/grpc.md): calls go on it without opening one. The stream's
          -- reset reaches etcd when the connection is next used (seen with libcurl 8.14)
          assert(c:get("many/1"))
          assert.is_true(sup.connections(port) <= during, sup.connections(port) .. " connections, " .. during .. " before")
        end
        -- the stream ends on the server on the next turn of the loop; nothing to await but that
        servers.until_true("watch stream ended", function() return sup.watch_streams(srv) == base_streams end, 5)
        if not etcd_client.grpc() then
          -- on the gateway the stream had a connection of its own, which goes with it
          servers.until_true("watch connection closed", function() return sup.connections(port) < during end, 5)
        end
      end)
    end)

    it("waits while the only member is down and resumes after its restart", function()
      run(function()
        local c = sup.client(srv)
        local w <close> = c:watch("restart/", { prefix = true, keepalive = 0.5 })
        ready(w)
        local r1 = sup.put(srv, "restart/a", "1")
        assert.are.equal(r1, assert(coord.timeout(5, w.next, w)).kv.mod_revision)
        srv:kill(1)
        -- the stream notices and keeps trying; nothing is delivered meanwhile
        assert.is_nil(coord.timeout(1.5, w.next, w))
        srv:restart(1)
        local r2 = sup.put(srv, "restart/b", "2")
        local r3 = sup.put(srv, "restart/a", "3")
        local evs, err = sup.take(w, 2, 20)
        assert.is_nil(err)
        assert.are.same({ "put restart/b=2", "put restart/a=3" }, values(evs))
        assert.are.same({ r2, r3 }, { evs[1].kv.mod_revision, evs[2].kv.mod_revision })
        assert.is_true(watch.stats(c).streams >= 2)
      end)
    end)

    it("keeps one idle stream up across many keepalive intervals, its endpoint healthy", function()
      run(function()
        local c = sup.client(srv)
        sup.put(srv, "idle", "0")
        local w <close> = c:watch("idle", { keepalive = 0.5 })
        ready(w)
        -- 12 intervals of real time, with plain calls on the one-member client meanwhile:
        -- none may find the endpoint failed
        local gets, failed = 0, {}
        local deadline = coord.now() + 12 * 0.5
        while coord.now() < deadline do
          local res, gerr = c:get("idle")
          gets = gets + 1
          if gerr then failed[#failed + 1] = tostring(gerr) end
          coord.sleep(0.1)
        end
        local st = watch.stats(c)
        assert.are.same({}, failed)
        assert.is_true(gets >= 10, gets .. " gets")
        assert.are.equal(1, st.streams, "the stream was reopened: " .. tostring(st.last_error))
        -- it was probed all along, and the probes were answered
        assert.is_true(st.probes >= 10, st.probes .. " probes")
        assert.is_true(st.progress >= 10, st.progress .. " progress replies")
        local r = sup.put(srv, "idle", "x")
        assert.are.equal(r, assert(coord.timeout(5, w.next, w)).kv.mod_revision)
      end)
    end)

    it("resumes an idle watch from its progress replies, past a compaction", function()
      run(function()
        local c = sup.client(srv)
        local w <close> = c:watch("calm", { keepalive = 0.2 })
        ready(w)
        -- 1,000 writes to another key, by 10 writers
        local last, writers = 0, {}
        for j = 1, 10 do
          writers[j] = coord.spawn(function()
            for i = 1, 100 do
              local r = sup.put(srv, "busy/" .. j, tostring(i))
              if r > last then last = r end
            end
          end)
        end
        for j = 1, 10 do assert(writers[j]:join()) end
        -- a reply taken after the last write is vouched for by the next one; 3 leave a margin
        local p = watch.stats(c).progress
        servers.until_true("progress replies", function() return watch.stats(c).progress >= p + 3 end, 10)
        sup.call(srv, "/v3/kv/compaction", { revision = last, physical = true })
        srv:kill(1)
        srv:restart(1)
        local r = sup.put(srv, "calm", "1")
        local evs, err = sup.take(w, 1, 20)
        assert.is_nil(err)
        assert.are.same({ "put calm=1" }, values(evs))
        assert.are.equal(r, evs[1].kv.mod_revision)
        -- exactly once
        assert.is_nil(coord.timeout(0.5, w.next, w))
        assert.is_nil(w.error)
        assert.is_true(watch.stats(c).streams >= 2)
      end)
    end)

    it("raises on bad arguments", function()
      local c = sup.client(srv)
      assert.has_error(function() c:watch(nil) end, "bad argument #1 to 'watch' (string expected, got nil)")
      assert.has_error(function() c:watch("k", 5) end, "bad argument #2 to 'watch' (table or nil expected, got integer)")
      assert.has_error(function() c:watch("k", { start_revision = "3" }) end,
        "bad option 'start_revision' to 'watch' (integer expected, got string)")
    end)
  end)
end

local http = coord.http

-- A put that may fail (the member is down or the cluster has no leader yet): revision or nil.
local function try_put(url, key, value)
  local res = http.post(url .. "/v3/kv/put", core.json_encode { key = core.b64encode(key), value = core.b64encode(value) },
    { timeout = 2, http_version = url:find("^http:") and "1.1" or nil }) -- as servers.lua's gateway()
  if not (res and res.status == 200) then return nil end
  return core.i64(core.json_decode(res.body).header.revision)
end

-- Reads w until an event for `last_key` (bounded); returns the events before it and the
-- times they were read.
local function until_key(w, last_key, limit)
  local out, times = {}, {}
  local ok, err = coord.timeout(limit, function()
    for ev in w:events() do
      if ev.kv.key == last_key then return true end
      out[#out + 1] = ev
      times[#times + 1] = coord.now()
    end
    return nil, w.error
  end)
  assert(ok, tostring(err))
  return out, times
end

-- The leader's URL and the followers' URLs of a cluster.
local function roles(srv)
  local leader, followers = nil, {}
  for _, m in ipairs(srv.members) do
    local j = sup.call(srv, "/v3/maintenance/status", {}, m.url)
    if j.leader == j.header.member_id then leader = m.url else followers[#followers + 1] = m.url end
  end
  assert(leader and #followers == 2, "no leader")
  return leader, followers
end

for _, version in ipairs { "3.4", "3.5" } do
  describe("etcd watch on a 3-member etcd " .. version .. " cluster", function()
    local srv
    setup(function() srv = servers.etcd { version = version, members = 3 } end)
    teardown(function() if srv then srv:stop() end end)

    it("survives the kill of the member it is connected to: no event lost or repeated", function()
      run(function()
        -- the stream on a follower, so that the cluster itself keeps committing after the kill
        local leader, followers = roles(srv)
        local c = sup.client(srv, { endpoints = { followers[1], leader, followers[2] } })
        local w <close> = c:watch("res/", { prefix = true })
        local created = ready(w)
        local url = watch.stats(c).connected
        assert.are.equal(followers[1], url)
        local victim
        for i, m in ipairs(srv.members) do if m.url == url then victim = i end end
        local n = 200
        local killed_at
        local writer = coord.spawn(function()
          for i = 1, n do
            if i == n // 2 then
              killed_at = coord.now()
              srv:kill(victim)
            end
            local tries = 0
            while not try_put(leader, "res/k", tostring(i)) do
              tries = tries + 1
              assert(tries < 300, "puts keep failing")
              coord.sleep(0.05)
            end
            coord.sleep(0.01) -- a steady writer, not a burst
          end
          assert(try_put(leader, "res/done", "") or try_put(leader, "res/done", ""))
        end)
        local evs, times = until_key(w, "res/done", 60)
        assert(writer:join())
        -- the first event written after the kill comes within a bound (measured: see report)
        local delay
        for i, ev in ipairs(evs) do
          if tonumber(ev.kv.value) >= n // 2 then
            delay = times[i] - killed_at
            break
          end
        end
        io.stderr:write(("\n[etcd %s] first event %.3f s after the kill of the stream's member\n"):format(version, delay))
        assert.is_true(delay < 3, ("first event %.2f s after the kill"):format(delay))
        -- the oracle: the same history replayed by a fresh watch on a live member
        local c2 = sup.client(srv, { endpoints = { leader } })
        local w2 <close> = c2:watch("res/", { prefix = true, start_revision = created + 1 })
        local want = until_key(w2, "res/done", 20)
        local function flat(list)
          local out = {}
          for i, ev in ipairs(list) do out[i] = ev.kv.mod_revision .. "=" .. ev.kv.value end
          return out
        end
        assert.are.same(flat(want), flat(evs))
        local seen = {}
        for i, ev in ipairs(evs) do
          seen[ev.kv.value] = true
          if i > 1 then assert.is_true(ev.kv.mod_revision > evs[i - 1].kv.mod_revision) end
        end
        for i = 1, n do assert.is_true(seen[tostring(i)], "lost put " .. i) end
        local st = watch.stats(c)
        assert.is_true(st.streams >= 2)
        assert.are_not.equal(url, st.connected)
      end)
    end)
  end)

  describe("etcd watch with auth on etcd " .. version, function()
    local srv
    setup(function() srv = sup.auth_server(version) end)
    teardown(function() if srv then srv:stop() end end)

    it("reports a watch refused for lack of permission as an error", function()
      run(function()
        local c = sup.client(srv, { user = "alice", password = "alicepw" })
        local denied <close> = c:watch("secret")
        local allowed <close> = c:watch("open/", { prefix = true })
        local ev, err = coord.timeout(10, denied.next, denied)
        assert.is_nil(ev)
        assert.are.equal("permission", err.kind)
        assert.matches("permission denied", err.message)
        assert.are.equal(err, denied.error)
        ready(allowed)
        assert(srv:ctl("put open/a 1"))
        ev = assert(coord.timeout(5, allowed.next, allowed))
        assert.are.equal("open/a", ev.kv.key)
      end)
    end)

    it("reports bad credentials as an 'auth' error", function()
      run(function()
        local c = sup.client(srv, { user = "alice", password = "wrong" })
        local w <close> = c:watch("open/x")
        local ev, err = coord.timeout(10, w.next, w)
        assert.is_nil(ev)
        assert.are.equal("auth", err.kind)
        assert.is_nil(tostring(err):find("alicepw", 1, true))
      end)
    end)

    it("creates watches after the stream's token has expired", function()
      run(function()
        local c = sup.client(srv, { user = "alice", password = "alicepw" })
        local w1 <close> = c:watch("open/", { prefix = true })
        ready(w1)
        coord.sleep(3) -- the token's TTL is 2 s
        local w2 <close> = c:watch("open/b")
        assert(coord.timeout(10, w2.ready, w2))
        assert(srv:ctl("put open/b 2"))
        local e1 = assert(coord.timeout(5, w1.next, w1))
        local e2 = assert(coord.timeout(5, w2.next, w2))
        assert.are.equal("2", e1.kv.value)
        assert.are.equal("2", e2.kv.value)
        assert.is_nil(coord.timeout(0.3, w1.next, w1))
        -- the refusal made the stream start again with a new token
        assert.are.equal(2, watch.stats(c).streams)
      end)
    end)
  end)

  describe("etcd watch over TLS on etcd " .. version, function()
    local srv
    setup(function() srv = servers.etcd { version = version, tls = true } end)
    teardown(function() if srv then srv:stop() end end)

    -- with sharing: the requests' HTTP/2 connection carries the watch stream too; without
    -- (the default), the watches have one HTTP/1.1 connection of their own
    for _, shared in ipairs { false, true } do
      it("runs several watches on one connection (HTTP/2 shared: " .. tostring(shared) .. ")", function()
        local old = watch.http2(shared)
        finally(function() watch.http2(old) end)
        run(function()
          local c = sup.client(srv)
          assert(c:put("tls/0", "x"))
          local ws = {}
          -- closed also when an assertion fails: an open watch would keep run()'s loop going
          local closer <close> = setmetatable({}, { __close = function()
            for i = 1, #ws do ws[i]:close() end
          end })
          -- shared, libcurl 7.88 may stall the connection until the next write to the
          -- watch body (doc/etcd-watch.md, HTTP/2): a short keepalive bounds such stalls
          for i = 1, 5 do ws[i] = c:watch("tls/" .. i, { keepalive = shared and 0.5 or nil }) end
          for i = 1, 5 do ready(ws[i]) end
          for i = 1, 5 do assert(c:put("tls/" .. i, "v" .. i)) end
          for i = 1, 5 do
            local ev = assert(coord.timeout(10, ws[i].next, ws[i]))
            assert.are.equal("v" .. i, ev.kv.value)
          end
          -- over gRPC the watch stream always shares the calls' connection (doc/grpc.md)
          assert.are.equal((shared or etcd_client.grpc()) and 1 or 2, sup.connections(srv.members[1].port))
          if not shared then assert.are.equal(1, watch.stats(c).streams) end
        end)
      end)
    end
  end)
end
