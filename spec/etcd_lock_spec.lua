-- spec/etcd_lock_spec.lua: coord.etcd locks and elections on the client-side recipe (keys
-- <name>/<lease hex>, waiters watching their predecessor) against real etcd 3.4 and 3.5:
-- mass cancellation, try-lock, FIFO order, unlock from on_lost, uncertain create txns.

local coord = require "coord"
local servers = require "servers"
local etcd_mod = require "etcd_client" -- coord.etcd with the run's transport
local errors = require "coord.errors"
local watch_mod = require "coord.etcd.watch"

-- Waits (bounded) for a condition no event reports (the count of leases, the client's own
-- watch count).
-- Waits (bounded) until check() holds. A check that fails to read (the cluster is still
-- recovering from a kill: every endpoint backing off) counts as "not yet", not as the answer.
local function eventually(what, check)
  servers.until_true(what, function()
    local ok, v = pcall(check)
    return ok and v
  end, 30)
end

local function co(fn)
  return function() return coord.run(fn) end
end

local function keys(etcd, prefix)
  return assert(etcd:range(prefix, { prefix = true, count_only = true })).count
end

local function lease_count(etcd)
  return #assert(etcd:leases())
end

-- Waits (bounded) until `prefix` has n keys, reading again after each change a watch (on a
-- client of its own, apart from the watches counted) reports.
local function await_keys(seer, what, prefix, n)
  local w <close> = seer:watch(prefix, { prefix = true })
  assert(w:ready())
  local ok, err = coord.timeout(30, function()
    while keys(seer, prefix) ~= n do
      local ev, werr = w:next()
      if not ev then return nil, werr end
    end
    return true
  end)
  assert(ok, what .. ": " .. tostring(err) .. " (" .. keys(seer, prefix) .. " keys)")
end

for _, version in ipairs { "3.4", "3.5" } do
  describe("coord.etcd locks and elections (client-side recipe) on etcd " .. version, function()
    local server, etcd, seer

    setup(function()
      server = servers.etcd { version = version }
      etcd = etcd_mod.new { endpoints = { server.endpoint } }
      seer = etcd_mod.new { endpoints = { server.endpoint } }
    end)

    teardown(function()
      if server then server:stop() end
    end)

    it("names the key <name>/<lease hex>, bound to the lease, owner = lowest create revision", co(function()
      local lock = assert(etcd:lock("r/one"))
      assert.equal(("r/one/%x"):format(lock.lease), lock.key)
      local kv = assert(etcd:get(lock.key))
      assert.equal(lock.lease, kv.lease)
      assert.equal(kv.create_revision, lock.rev)
      assert.equal("integer", math.type(lock.header.revision))
      assert(lock:unlock())
      assert.is_nil(etcd:get(lock.key))
      assert.equal(-1, etcd:time_to_live(lock.lease).ttl)
    end))

    it("leaves no key and no lease after 40 waiting contenders are canceled in one loop", co(function()
      local base = lease_count(etcd)
      local holder = assert(etcd:lock("mass/l"))
      local tasks = {}
      for i = 1, 40 do
        tasks[i] = coord.spawn(function() return etcd:lock("mass/l") end)
      end
      -- every contender has its key and watches its predecessor
      await_keys(seer, "40 contenders queue", "mass/l/", 41)
      eventually("40 contenders watch", function() return watch_mod.stats(etcd).watches == 40 end)
      for _, t in ipairs(tasks) do assert.is_true(t:cancel()) end
      await_keys(seer, "contender keys gone", "mass/l/", 1)
      eventually("contender leases gone", function() return lease_count(etcd) == base + 1 end)
      assert.equal(0, watch_mod.stats(etcd).watches)
      assert(holder:unlock())

      -- a fresh contended lock, and a contended campaign, still complete
      local a = assert(etcd:lock("mass/fresh"))
      local b = coord.spawn(function() return assert(etcd:lock("mass/fresh", { timeout = 20 })) end)
      await_keys(seer, "b waits", "mass/fresh/", 2)
      assert(a:unlock())
      local ok, lb = b:join()
      assert.is_true(ok, tostring(lb))
      assert(lb:unlock())
      local l1 = assert(etcd:campaign("mass/e", "one"))
      local c2 = coord.spawn(function() return assert(etcd:campaign("mass/e", "two", { timeout = 20 })) end)
      await_keys(seer, "second candidate waits", "mass/e/", 2)
      assert(l1:resign())
      local ok2, l2 = c2:join()
      assert.is_true(ok2, tostring(l2))
      assert.equal("two", etcd:leader("mass/e").value)
      assert(l2:resign())
      assert.equal(0, keys(etcd, "mass/"))
      eventually("leases back", function() return lease_count(etcd) == base end)
    end))

    it("leaves nothing behind when contenders are canceled at any moment of their attempt", co(function()
      local base = lease_count(etcd)
      local holder = assert(etcd:lock("any/l"))
      local tasks = {}
      for i = 1, 20 do
        tasks[i] = coord.spawn(function() return etcd:lock("any/l") end)
      end
      -- spread the cancels over grant, txn, range and watch: whatever each one is doing
      for i, t in ipairs(tasks) do
        coord.sleep(0.003 * i)
        t:cancel()
      end
      await_keys(seer, "contender keys gone", "any/l/", 1)
      eventually("contender leases gone", function() return lease_count(etcd) == base + 1 end)
      assert(holder:unlock())
      assert.equal(0, keys(etcd, "any/"))
      eventually("leases back", function() return lease_count(etcd) == base end)
    end))

    it("hands over a leadership won in the loop iteration an outer timeout ran out", co(function()
      local base = lease_count(etcd)
      local client = etcd_mod.new { endpoints = { server.endpoint } }
      local limit, deadline = 2, nil
      -- once the create txn is answered, a task blocks the loop past the outer limit, then
      -- ends: that wakes the campaign's last step in the loop iteration the outer timer
      -- fires in, just before it (as a reply and a timer handled together)
      local txn = client.txn
      client.txn = function(self, spec)
        local r, e, h = txn(self, spec)
        if spec.compare and spec.compare[1].create_revision == 0 then
          coord.spawn(function()
            local t = deadline + 0.2
            while coord.now() < t do end
          end):join()
        end
        return r, e, h
      end
      deadline = coord.now() + limit
      local l, err = coord.timeout(limit, client.campaign, client, "late/e", "v")
      assert.is_truthy(l, "the leadership was dropped: " .. tostring(err))
      assert.equal(l.key, etcd:leader("late/e").key)
      assert(l:resign())
      assert.equal(0, keys(etcd, "late/"))
      eventually("lease back", function() return lease_count(etcd) == base end)
      assert(etcd:campaign("late/e", "w", { timeout = 10 })):resign()
    end))

    it("releases a held lock and a leadership whose task is canceled (<close>)", co(function()
      local base = lease_count(etcd)
      local held = coord.queue()
      local t = coord.spawn(function()
        local l <close> = assert(etcd:lock("held/l"))
        local e <close> = assert(etcd:campaign("held/e", "v"))
        held:put(true)
        coord.sleep(600) -- until canceled
      end)
      assert.is_true(coord.timeout(20, held.get, held))
      assert.is_true(t:cancel())
      await_keys(seer, "both keys gone", "held/", 0)
      eventually("both leases gone", function() return lease_count(etcd) == base end)
      assert(etcd:lock("held/l", { timeout = 0 })):unlock()
    end))

    it("try-locks with timeout = 0: at once when held, taken when free", co(function()
      local base = lease_count(etcd)
      local held = assert(etcd:lock("try/l"))
      -- bounded here only so that a lock that waits fails the test instead of hanging it
      local lock, err = coord.timeout(10, etcd.lock, etcd, "try/l", { timeout = 0 })
      assert.is_nil(lock)
      assert.equal("timeout", err.kind)
      assert.matches("held by another", err.message)
      -- the try's key and lease are gone before it returns
      assert.equal(1, keys(etcd, "try/l/"))
      assert.equal(base + 1, lease_count(etcd))
      -- with the caller's lease, the try deletes its key and leaves the lease alone
      local mine = assert(etcd:grant(30))
      lock, err = coord.timeout(10, etcd.lock, etcd, "try/l", { timeout = 0, lease = mine.id })
      assert.is_nil(lock)
      assert.equal("timeout", err.kind)
      assert.equal(1, keys(etcd, "try/l/"))
      assert.is_true(etcd:time_to_live(mine.id).ttl > 0)
      assert(held:unlock())
      lock = assert(etcd:lock("try/l", { timeout = 0, lease = mine.id }))
      assert.is_nil(lock.keeper)
      assert.equal(("try/l/%x"):format(mine.id), lock.key)
      assert(lock:unlock())
      assert.equal(0, keys(etcd, "try/l/"))
      assert.is_true(etcd:time_to_live(mine.id).ttl > 0)
      assert(etcd:revoke(mine.id))
      lock = assert(etcd:lock("try/l", { timeout = 0 }))
      assert(lock:unlock())

      local me = assert(etcd:campaign("try/e", "a"))
      local l, cerr = coord.timeout(10, etcd.campaign, etcd, "try/e", "b", { timeout = 0 })
      assert.is_nil(l)
      assert.equal("timeout", cerr.kind)
      assert.equal("a", etcd:leader("try/e").value)
      assert(me:resign())
      l = assert(etcd:campaign("try/e", "b", { timeout = 0 }))
      assert.equal("b", etcd:leader("try/e").value)
      assert(l:resign())
      assert.equal(0, keys(etcd, "try/"))
      assert.equal(base, lease_count(etcd))
    end))

    it("serves 10 waiters in the order they queued, one holder at a time", co(function()
      local holder = assert(etcd:lock("fifo/l"))
      local holding, max_holding, order, revs = 0, 0, {}, {}
      local tasks = {}
      for i = 1, 10 do
        tasks[i] = coord.spawn(function()
          local lock = assert(etcd:lock("fifo/l", { timeout = 60 }))
          holding = holding + 1
          max_holding = math.max(max_holding, holding)
          order[#order + 1], revs[#revs + 1] = i, lock.rev
          local first = assert(etcd:range("fifo/l/", { prefix = true, sort_target = "create", sort_order = "ascend", limit = 1 }))
          assert.equal(lock.key, first[1].key)
          coord.sleep(0.02) -- the holder's work
          holding = holding - 1
          assert(lock:unlock())
        end)
        -- queue them one after the other: contender i's key exists before i + 1 starts
        await_keys(seer, "contender " .. i .. " queued", "fifo/l/", i + 1)
      end
      assert(holder:unlock())
      for i, t in ipairs(tasks) do
        local ok, err = coord.timeout(60, t.join, t)
        assert.is_true(ok, "contender " .. i .. ": " .. tostring(err))
      end
      assert.same({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 }, order)
      for i = 2, #revs do assert.is_true(revs[i] > revs[i - 1]) end
      assert.equal(1, max_holding)
      assert.equal(0, keys(etcd, "fifo/"))
    end))

    it("unlocks and resigns from on_lost without raising", co(function()
      local reported = {}
      local old = coord.on_error(function(err) reported[#reported + 1] = tostring(err) end)
      local results = {}
      local lock = assert(etcd:lock("lost/l", { ttl = 3, on_lost = function(err, l)
        results.err = err
        results.same = l
        results.ok, results.res = pcall(l.unlock, l)
      end }))
      local ok, out = server:ctl(("lease revoke %x"):format(lock.lease))
      assert.is_true(ok, out)
      local res, kerr = coord.timeout(15, lock.keeper.wait, lock.keeper)
      assert.is_nil(res)
      assert.equal("lost", kerr.kind)
      assert.equal("lost", results.err.kind)
      assert.equal(lock, results.same)
      assert.is_true(results.ok, tostring(results.res))
      assert.is_true(results.res)
      assert.equal(results.err, lock.lost)
      assert.is_true(lock.released)
      assert.is_true(lock:unlock())
      assert(etcd:lock("lost/l", { timeout = 0 })):unlock()

      local lead = assert(etcd:campaign("lost/e", "v", { ttl = 3, on_lost = function(_, l)
        results.rok, results.rres = pcall(l.resign, l)
      end }))
      ok, out = server:ctl(("lease revoke %x"):format(lead.lease))
      assert.is_true(ok, out)
      coord.timeout(15, lead.keeper.wait, lead.keeper)
      assert.is_true(results.rok, tostring(results.rres))
      assert.is_true(results.rres)
      assert.is_true(lead.resigned)
      assert.is_nil(etcd:leader("lost/e"))
      coord.on_error(old)
      assert.same({}, reported)
    end))

    it("ends a waiting attempt with a lost error when its lease is revoked", co(function()
      local base = lease_count(etcd)
      local holder = assert(etcd:lock("lostw/l"))
      local waiter = coord.spawn(function() return etcd:lock("lostw/l", { ttl = 3 }) end)
      await_keys(seer, "the waiter queues", "lostw/l/", 2)
      local theirs
      for _, kv in ipairs(assert(etcd:range("lostw/l/", { prefix = true }))) do
        if kv.key ~= holder.key then theirs = kv.lease end
      end
      local ok, out = server:ctl(("lease revoke %x"):format(theirs))
      assert.is_true(ok, out)
      local jok, res, err = coord.timeout(15, waiter.join, waiter)
      assert.is_true(jok)
      assert.is_nil(res)
      assert.equal("lost", err.kind)
      assert.equal(1, keys(etcd, "lostw/l/"))
      assert(holder:unlock())
      assert.equal(base, lease_count(etcd))
    end))

    it("reads its key instead of re-sending the create txn after an uncertain failure", co(function()
      local faulty = etcd_mod.new { endpoints = { server.endpoint } }
      local sent, mode = 0, nil
      -- the txn's connection "breaks": after it was applied ("after"), or before it was sent
      -- ("before"); the transport says it may have been applied either way
      function faulty:_post(path, body, opts)
        if path == "/v3/kv/txn" and mode then
          local m = mode
          mode = nil
          sent = sent + 1
          if m == "after" then etcd_mod.Client._post(self, path, body, opts) end
          return nil, errors.new("closed", "connection broken (injected)", { maybe_applied = true, path = path })
        end
        if path == "/v3/kv/txn" then sent = sent + 1 end
        return etcd_mod.Client._post(self, path, body, opts)
      end
      mode = "after"
      local lock = assert(faulty:lock("unc/l"))
      assert.equal(1, sent) -- the read told it the key is there: no second txn
      assert.equal(1, keys(etcd, "unc/l/"))
      assert.equal(lock.lease, etcd:get(lock.key).lease)
      assert(lock:unlock())

      sent, mode = 0, "before"
      lock = assert(faulty:lock("unc/l"))
      assert.equal(2, sent) -- the read found no key: the txn was sent again
      assert.equal(1, keys(etcd, "unc/l/"))
      assert(lock:unlock())

      -- a definite refusal is not retried: the lease is given back and the error returned
      local base = lease_count(etcd)
      function faulty:_post(path, body, opts)
        if path == "/v3/kv/txn" then
          sent = sent + 1
          return nil, errors.new("invalid", "refused (injected)", { maybe_applied = false, path = path })
        end
        return etcd_mod.Client._post(self, path, body, opts)
      end
      sent = 0
      local l, err = faulty:lock("unc/l")
      assert.is_nil(l)
      assert.equal("invalid", err.kind)
      assert.equal(1, sent)
      assert.equal(base, lease_count(etcd))
      assert.equal(0, keys(etcd, "unc/"))
    end))

    it("observes leader changes: none, first, proclaimed value, successor", co(function()
      local obs <close> = assert(etcd:observe("obs/e"))
      local a = assert(etcd:campaign("obs/e", "a"))
      local kv, _, h = assert(coord.timeout(10, obs.next, obs))
      assert.equal("a", kv.value)
      assert.equal(a.key, kv.key)
      assert.is_true(h.revision >= a.rev)
      local b = coord.spawn(function() return assert(etcd:campaign("obs/e", "b")) end)
      await_keys(seer, "b waits", "obs/e/", 2)
      assert(etcd:proclaim(a, "a2"))
      assert.equal("a2", assert(coord.timeout(10, obs.next, obs)).value)
      assert(a:resign())
      assert.equal("b", assert(coord.timeout(10, obs.next, obs)).value)
      local _, lb = b:join()
      local _, perr = etcd:proclaim(a, "stale")
      assert.equal("not_found", perr.kind)
      assert(lb:resign())
      obs:close()
      local none, cerr = obs:next()
      assert.is_nil(none)
      assert.equal("closed", cerr.kind)
    end))

    it("works under a namespace prefix", co(function()
      local ns = etcd_mod.new { endpoints = { server.endpoint }, prefix = "ns1/" }
      local lock = assert(ns:lock("x"))
      assert.equal(("x/%x"):format(lock.lease), lock.key)
      assert.equal(1, keys(etcd, "ns1/x/"))
      local _, err = ns:lock("x", { timeout = 0 })
      assert.equal("timeout", err.kind)
      assert(lock:unlock())
      local me = assert(ns:campaign("e", "v"))
      assert.equal(me.key, ns:leader("e").key)
      assert.equal("v", etcd:leader("ns1/e").value)
      assert(me:resign())
      assert.equal(0, keys(etcd, "ns1/"))
    end))

    it("raises on bad options", co(function()
      assert.has_error(function() etcd:lock("x", { timeout = -1 }) end)
      assert.has_error(function() etcd:lock("x", { timeout = "1" }) end)
      assert.has_error(function() etcd:lock("x", { on_lost = 1 }) end)
      assert.has_error(function() etcd:proclaim({}, "v") end)
      assert.has_error(function() etcd:observe(1) end)
    end))
  end)
end

describe("coord.etcd elections on a 3-member etcd 3.5 whose leader is killed", function()
  local server, etcd

  setup(function()
    server = servers.etcd { version = "3.5", members = 3 }
    etcd = etcd_mod.new { endpoints = server.endpoints, timeout = 5 }
  end)

  teardown(function()
    if server then server:stop() end
  end)

  it("leaves no lease or key behind after contenders cut off by outer timeouts", co(function()
    local base = lease_count(etcd)
    local running, won, rounds = true, 0, 0
    -- as the soak's contenders: each round is bounded from outside (0.2-0.8 s), often
    -- shorter than a hand-over, and the leadership is given back at once
    local function contender(i)
      while running and rounds < 2000 do
        rounds = rounds + 1
        local l = coord.timeout(0.2 + math.random() * 0.6, etcd.campaign, etcd, "chaos/e", "c" .. i, { ttl = 5 })
        if l then
          won = won + 1
          etcd:resign(l) -- may fail during the leader election: the lease then ends by itself
        end
        coord.sleep(0.02) -- pacing, not synchronisation
      end
    end
    local tasks = {}
    for i = 1, 4 do tasks[i] = coord.spawn(contender, i) end
    servers.until_true("first leaderships", function() return won >= 10 end, 60)
    local leader = assert(server:leader(), "no leader member")
    server:kill(leader)
    local before = won
    servers.until_true("leaderships after the kill", function() return won >= before + 10 end, 60)
    server:restart(leader)
    running = false
    for _, t in ipairs(tasks) do assert.is_true((coord.timeout(30, t.join, t))) end
    eventually("no key left under the election", function() return keys(etcd, "chaos/e/") == 0 end)
    eventually("no lease left", function() return lease_count(etcd) == base end)
    local l = assert(etcd:campaign("chaos/e", "fresh", { timeout = 10 }))
    assert(l:resign())
  end))

  it("keeps revoking a resigned leadership's lease after a revoke failed for want of a leader", co(function()
    local l = assert(etcd:campaign("rv/e", "v", { ttl = 60 }))
    local leader = assert(server:leader(), "no leader member")
    local other = leader % 3 + 1
    -- the leader and one more member down: no quorum, every endpoint fails
    server:kill(leader)
    server:kill(other)
    local h, err = etcd:resign(l)
    assert.is_nil(h)
    assert.is_truthy(err.kind)
    assert.is_true(l.keeper.stopped)
    server:restart(other)
    -- well before the lease's 60 s TTL could explain it
    eventually("the key gone", function() return keys(etcd, "rv/e/") == 0 end)
    server:restart(leader)
    assert(etcd:campaign("rv/e", "next", { timeout = 10 })):resign()
  end))
end)
