-- spec/etcd_recipes_spec.lua: in-order keys (etcd:append), software transactions
-- (etcd:atomically) and endpoints behind a path prefix, against real etcd 3.4 and 3.5 (the
-- prefix through spec/peer as a proxy that strips it).

local coord = require "coord"
local helpers = require "helpers"
local servers = require "servers"
local etcd_mod = require "etcd_client" -- coord.etcd with the run's transport
local errors = require "coord.errors"

local function co(fn)
  return function() return coord.run(fn) end
end

-- n tasks each running fn(i); waits for all and returns their results, by task.
local function concurrently(n, fn)
  local tasks, out = {}, {}
  for i = 1, n do tasks[i] = coord.spawn(fn, i) end
  for i, t in ipairs(tasks) do
    local ok, r = t:join()
    assert(ok, tostring(r))
    out[i] = r
  end
  return out
end

local function value(etcd, key)
  local kv, err = etcd:get(key)
  if errors.is(err) then error(tostring(err)) end
  return kv and kv.value
end

for _, version in ipairs { "3.4", "3.5" } do
  describe("etcd:append on etcd " .. version, function()
    local server, etcd

    setup(function()
      server = servers.etcd { version = version }
      etcd = etcd_mod.new { endpoints = { server.endpoint } }
    end)

    teardown(function()
      if server then server:stop() end
    end)

    it("makes 200 distinct keys from 10 tasks, listed in creation order", co(function()
      -- other writes and deletes interleave, so revisions jump between appends
      local noise = coord.spawn(function()
        for i = 1, 60 do
          assert(etcd:put("noise/" .. i % 7, tostring(i)))
          if i % 3 == 0 then etcd:delete("noise/" .. i % 7) end
        end
      end)
      -- (what is tested is order and uniqueness under contention, so the attempts are not
      -- capped at the default 21: how many a task needs depends on the machine. With the
      -- client slowed 30 times, as under memcheck, the 10 tasks fall into step, each winning
      -- about one round in ten, and 21 attempts were sometimes used up; the atomically specs
      -- below give their contenders 100 for the same reason)
      local made = concurrently(10, function(t)
        local mine = {}
        for i = 1, 20 do
          local kv, err, h = etcd:append("queue/", t .. ":" .. i, { retries = 200 })
          assert(kv, tostring(err))
          assert.is_nil(err)
          assert.equal(kv.create_revision, h.revision)
          mine[i] = kv
        end
        return mine
      end)
      assert(noise:join())
      local by_key = {}
      for t, mine in ipairs(made) do
        for i, kv in ipairs(mine) do
          assert.is_nil(by_key[kv.key], "append returned " .. kv.key .. " twice")
          by_key[kv.key] = kv
          assert.matches("^queue/%d+$", kv.key)
          assert.equal(20, #kv.key - #"queue/")
          assert.is_true(tonumber(kv.key:sub(7)) <= kv.create_revision)
          assert.equal(t .. ":" .. i, kv.value)
          -- each task's appends are listed in the order they returned
          if i > 1 then assert.is_true(kv.key > mine[i - 1].key) end
        end
      end
      local list = assert(etcd:range("queue/", { prefix = true }))
      assert.equal(200, #list)
      for i, kv in ipairs(list) do
        local returned = assert(by_key[kv.key], "listed a key no append returned: " .. kv.key)
        assert.equal(returned.create_revision, kv.create_revision)
        assert.equal(returned.value, kv.value)
        if i > 1 then assert.is_true(kv.create_revision > list[i - 1].create_revision) end
      end
      -- sorting by create_revision gives the same order as the key order
      local by_create = assert(etcd:range("queue/", { prefix = true, sort_target = "create", sort_order = "ascend" }))
      for i, kv in ipairs(by_create) do assert.equal(list[i].key, kv.key) end
    end))

    it("attaches a lease, and keeps working in a client namespace", co(function()
      local lease = assert(etcd:grant(30))
      local kv = assert(etcd:append("leased/", "v", { lease = lease.id }))
      assert.equal(lease.id, kv.lease)
      assert.equal(lease.id, assert(etcd:get(kv.key)).lease)
      local ns = etcd_mod.new { endpoints = { server.endpoint }, prefix = "ns1/" }
      local a = assert(ns:append("q/", "a"))
      local b = assert(ns:append("q/", "b"))
      assert.is_true(b.key > a.key)
      assert.equal("a", value(etcd, "ns1/" .. a.key))
      assert.equal(2, #assert(ns:range("q/", { prefix = true })))
      assert(etcd:revoke(lease.id))
      assert.is_nil(value(etcd, kv.key))
    end))

    it("checks its arguments", co(function()
      assert.has_error(function() etcd:append(1, "v") end, "bad argument #1 to 'append' (string expected, got integer)")
      assert.has_error(function() etcd:append("q/", nil) end, "bad argument #2 to 'append' (string expected, got nil)")
      local msg = 'bad argument #1 to \'append\' (non-empty prefix expected, not a start of "coord-append:" nor under it)'
      assert.has_error(function() etcd:append("coord", "v") end, msg)
      assert.has_error(function() etcd:append("", "v") end, msg)
      assert.has_error(function() etcd:append("coord-append:", "v") end, msg)
      assert.has_error(function() etcd:append("coord-append:coord-append:x", "v") end, msg)
      assert.has_error(function() etcd:append("q/", "v", { lease = "x" }) end,
        "bad option 'lease' to 'append' (integer expected, got string)")
      assert.has_error(function() etcd:append("q/", "v", { retries = -1 }) end)
    end))
  end)

  describe("etcd:atomically on etcd " .. version, function()
    local server, etcd

    setup(function()
      server = servers.etcd { version = version }
      etcd = etcd_mod.new { endpoints = { server.endpoint } }
    end)

    teardown(function()
      if server then server:stop() end
    end)

    it("counts exactly 200 from 10 tasks x 20 increments", co(function()
      local runs = 0
      concurrently(10, function()
        for _ = 1, 20 do
          local n, err, h = etcd:atomically(function(tx)
            runs = runs + 1
            local n = tonumber(tx:get("stm/counter") or "0") + 1
            tx:put("stm/counter", tostring(n))
            return n
          end, { retries = 100 })
          assert(n, tostring(err))
          assert.is_nil(err)
          assert.equal("integer", math.type(h.revision))
        end
      end)
      assert.equal("200", value(etcd, "stm/counter"))
      assert.is_true(runs >= 200)
    end))

    it("keeps the sum of a bank transfer, and every view is consistent", co(function()
      assert(etcd:put("bank/a", "100"))
      assert(etcd:put("bank/b", "100"))
      local seen = 0
      concurrently(6, function(t)
        for i = 1, 10 do
          if t == 6 then
            -- an auditor: both balances always come from one snapshot
            local sum = assert(etcd:atomically(function(tx)
              return tonumber(tx:get("bank/a")) + tonumber(tx:get("bank/b"))
            end, { retries = 100 }))
            assert.equal(200, sum)
            seen = seen + 1
          else
            local from, to = "bank/a", "bank/b"
            if (t + i) % 2 == 0 then from, to = to, from end
            assert(etcd:atomically(function(tx)
              local f, g = tonumber(tx:get(from)), tonumber(tx:get(to))
              local amount = math.min(f, 7)
              tx:put(from, tostring(f - amount))
              tx:put(to, tostring(g + amount))
            end, { retries = 100 }))
          end
        end
      end)
      assert.equal(10, seen)
      assert.equal(200, tonumber(value(etcd, "bank/a")) + tonumber(value(etcd, "bank/b")))
    end))

    it("reads its own writes and deletes, and an absent key read is compared too", co(function()
      assert(etcd:put("own/gone", "x"))
      local runs, seen = 0, {}
      local r, err, h = etcd:atomically(function(tx)
        runs = runs + 1
        seen[runs] = tx:get("own/new") or "absent"
        -- someone else creates the key read as absent, on the first run only
        if runs == 1 then assert(etcd:put("own/new", "theirs")) end
        tx:put("own/mine", "1")
        assert.equal("1", tx:get("own/mine"))
        assert.equal("x", tx:get("own/gone"))
        tx:delete("own/gone")
        assert.is_nil(tx:get("own/gone"))
        return nil
      end)
      assert.is_nil(err)
      assert.is_true(r)
      assert.same({ "absent", "theirs" }, seen)
      assert.is_truthy(h.revision)
      assert.equal("1", value(etcd, "own/mine"))
      assert.is_nil(value(etcd, "own/gone"))
    end))

    it("lists a prefix in the view; a key created or deleted under it conflicts", co(function()
      assert(etcd:put("rg/a", "1"))
      assert(etcd:put("rg/b", "2"))
      local runs, views = 0, {}
      local function keys(list)
        local t = {}
        for i, kv in ipairs(list) do t[i] = kv.key .. "=" .. kv.value end
        return table.concat(t, " ")
      end
      local r, err = etcd:atomically(function(tx)
        runs = runs + 1
        views[runs] = keys(assert(tx:range("rg/")))
        if runs == 1 then assert(etcd:put("rg/new", "x")) end
        if runs == 2 then assert(etcd:delete("rg/b")) end
        tx:put("rg/c", "3")
        tx:delete("rg/a")
        return keys(tx:range("rg/"))
      end)
      assert.is_nil(err)
      assert.equal(3, runs)
      assert.same({ "rg/a=1 rg/b=2", "rg/a=1 rg/b=2 rg/new=x", "rg/a=1 rg/new=x" }, views)
      assert.equal("rg/c=3 rg/new=x", r)
      assert.equal(2, #assert(etcd:range("rg/", { prefix = true })))
      assert.equal("3", value(etcd, "rg/c"))
    end))

    it("runs fn again after a conflict with a fresh view", co(function()
      assert(etcd:put("again/k", "0"))
      local runs, views = 0, {}
      local r = assert(etcd:atomically(function(tx)
        runs = runs + 1
        views[runs] = tx:get("again/k")
        if runs == 1 then assert(etcd:put("again/k", "changed")) end
        tx:put("again/out", views[runs])
        return views[runs]
      end))
      assert.equal(2, runs)
      assert.same({ "0", "changed" }, views)
      assert.equal("changed", r)
      assert.equal("changed", value(etcd, "again/out"))
    end))

    it("gives up with kind 'conflict' when the retries are used up, writing nothing", co(function()
      assert(etcd:put("exh/k", "0"))
      local runs = 0
      local r, err = etcd:atomically(function(tx)
        runs = runs + 1
        tx:get("exh/k")
        assert(etcd:put("exh/k", tostring(runs)))
        tx:put("exh/out", "never")
      end, { retries = 2 })
      assert.is_nil(r)
      assert.equal("conflict", err.kind)
      assert.equal(3, err.attempts)
      assert.equal(3, runs)
      assert.is_nil(value(etcd, "exh/out"))
    end))

    it("lets an error raised in fn propagate, committing nothing", co(function()
      local ok, e = pcall(function()
        return etcd:atomically(function(tx)
          tx:put("raise/k", "v")
          error("boom", 0)
        end)
      end)
      assert.is_false(ok)
      assert.equal("boom", e)
      assert.is_nil(value(etcd, "raise/k"))
    end))

    it("does not commit after a failed read, and refuses a view used after it ended", co(function()
      assert(etcd:put("fail/a", "1"))
      local escaped
      local r, err = etcd:atomically(function(tx)
        escaped = tx
        assert.equal("1", tx:get("fail/a"))
        -- the snapshot revision is compacted away before the second read
        for i = 1, 3 do assert(etcd:put("fail/b", tostring(i))) end
        local _, _, h = etcd:atomically(function() end)
        assert(etcd:compact(h.revision))
        local v, rerr = tx:get("fail/b")
        assert.is_nil(v)
        assert.equal("compacted", rerr.kind)
        tx:put("fail/out", "never")
      end)
      assert.is_nil(r)
      assert.equal("compacted", err.kind)
      assert.is_nil(value(etcd, "fail/out"))
      assert.has_error(function() escaped:get("fail/a") end, "calling 'get' on a transaction that has ended")
      assert.has_error(function() escaped.put("k", "v") end)
    end))

    it("checks its arguments", co(function()
      assert.has_error(function() etcd:atomically("f") end,
        "bad argument #1 to 'atomically' (function expected, got string)")
      assert.has_error(function() etcd:atomically(function() end, { retries = 1.5 }) end,
        "bad option 'retries' to 'atomically' (integer expected, got float)")
      local ok, e = pcall(function()
        return etcd:atomically(function(tx) tx:put("k", 1) end)
      end)
      assert.is_false(ok)
      assert.matches("bad argument #2 to 'put' %(string expected, got integer%)", e)
    end))
  end)

  -- The path prefix comes from an HTTP/1.1 proxy (spec/peer): gRPC cannot be under a path
  -- (doc/grpc.md), so these clients use the JSON gateway whatever the run's transport.
  describe("etcd " .. version .. " behind a path prefix", function()
    local server, peer, etcd, direct

    setup(function()
      server = servers.etcd { version = version }
      peer = helpers.start_peer { upstream = server.members[1].port, strip = "/etcd" }
      etcd = etcd_mod.new { endpoints = { peer.url("/etcd/") }, transport = "json" }
      direct = etcd_mod.new { endpoints = { server.endpoint } }
    end)

    teardown(function()
      if peer then peer.stop() end
      if server then server:stop() end
    end)

    it("sends every call under the prefix", co(function()
      assert(etcd:put("pp/a", "1"))
      assert.equal("1", value(etcd, "pp/a"))
      assert.equal("1", value(direct, "pp/a"))
      assert.equal(1, #assert(etcd:range("pp/", { prefix = true })))
      assert(etcd:append("pp/q/", "x"))
      assert.equal(2, assert(etcd:atomically(function(tx)
        local n = tonumber(tx:get("pp/a")) + 1
        tx:put("pp/a", tostring(n))
        return n
      end)))
      assert.is_true(peer.count("/etcd/v3/kv/put") >= 1)
      assert.is_true(peer.count("/etcd/v3/kv/txn") >= 2)
      -- the per-member calls take the prefixed URL as the member's
      assert.is_truthy(assert(etcd:status(peer.url("/etcd"))).version)
      assert.is_truthy(assert(etcd:status()).version)
      -- without the prefix, the proxy has nothing there
      local bare = etcd_mod.new { endpoints = { peer.url("") }, transport = "json" }
      local kv, err = bare:get("pp/a")
      assert.is_nil(kv)
      assert.equal("not_found", err.kind)
    end))

    it("returns a commit whose reply was lost, without running fn or append again", co(function()
      assert(direct:put("pl/n", "0"))
      local before = peer.count("/etcd/v3/kv/txn")
      peer.arm("/etcd/v3/kv/txn")
      local runs = 0
      local r, err = etcd:atomically(function(tx)
        runs = runs + 1
        tx:put("pl/n", tostring(tonumber(tx:get("pl/n")) + 1))
      end)
      assert.is_nil(r)
      assert.is_true(err.maybe_applied, tostring(err))
      assert.equal(1, runs)
      assert.equal(before + 1, peer.count("/etcd/v3/kv/txn"))
      assert.equal("1", value(direct, "pl/n"))

      -- (a client of its own: the lost reply left the first one's endpoint backing off)
      local c = etcd_mod.new { endpoints = { peer.url("/etcd") }, transport = "json" }
      assert.is_nil(value(c, "pl/warm"))
      peer.arm("/etcd/v3/kv/txn")
      local kv, aerr = c:append("pl/q/", "once")
      assert.is_nil(kv)
      assert.is_true(aerr.maybe_applied, tostring(aerr))
      assert.equal(before + 2, peer.count("/etcd/v3/kv/txn"))
      local list = assert(direct:range("pl/q/", { prefix = true }))
      assert.equal(1, #list)
      assert.equal("once", list[1].value)
    end))

    it("keeps the prefix for watch streams", co(function()
      local c = etcd_mod.new { endpoints = { peer.url("/etcd") }, transport = "json" }
      local w <close> = c:watch("pw/", { prefix = true })
      assert(w:ready())
      assert.equal(1, peer.count("/etcd/v3/watch"))
      assert(direct:put("pw/k", "v"))
      local ev, err = w:next()
      assert(ev, tostring(err))
      assert.equal("pw/k", ev.kv.key)
      assert.equal("v", ev.kv.value)
    end))
  end)

  describe("etcd " .. version .. " over TLS with a server name and a path", function()
    local server

    setup(function()
      server = servers.etcd { version = version, tls = true }
    end)

    teardown(function()
      if server then server:stop() end
    end)

    -- the certificate names localhost; the connection goes to 127.0.0.1 and the port given,
    -- and the path reaches etcd (which serves nothing under /etcd: 404). A path is the JSON
    -- gateway's (gRPC refuses one: spec/etcd_grpc_spec.lua), so this is on "json" always.
    it("keeps the path and the port", co(function()
      local function client(url)
        local tls = server:client_tls()
        tls.server_name = "localhost"
        return etcd_mod.new { endpoints = { url }, tls = tls, timeout = 10, transport = "json" }
      end
      assert(client(server.endpoint .. "/"):put("tp/a", "1"))
      local kv, err = client(server.endpoint .. "/etcd"):get("tp/a")
      assert.is_nil(kv)
      assert.equal("not_found", err.kind, tostring(err))
      assert.equal(404, err.status)
    end))
  end)
end
