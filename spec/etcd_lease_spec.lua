-- spec/etcd_lease_spec.lua: coord.etcd leases, keepalives, locks and elections against real
-- etcd 3.4 and 3.5 members, and against etcdctl's lock and elect.

local coord = require "coord"
local servers = require "servers"
local etcd_mod = require "etcd_client" -- coord.etcd with the run's transport

-- Waits (bounded) for a condition no event reports, such as another process's progress;
-- `log` (a file) is shown if it never comes.
local function eventually(what, check, log)
  local ok, err = pcall(servers.until_true, what, check, 30)
  if not ok then error(tostring(err) .. (log and ("\n" .. (servers.read_file(log) or "")) or ""), 2) end
end

-- Runs a test body as a coroutine: waits that end in another coroutine (a join, a gather under
-- coord.timeout) are then woken at once, where the main chunk's loop would sleep until the
-- timeout's own timer.
local function co(fn)
  return function() return coord.run(fn) end
end

local function count(etcd, prefix)
  return assert(etcd:range(prefix, { prefix = true, count_only = true })).count
end

for _, version in ipairs { "3.4", "3.5" } do
  describe("coord.etcd leases, locks and elections on etcd " .. version, function()
    local server, etcd

    setup(function()
      server = servers.etcd { version = version }
      etcd = etcd_mod.new { endpoints = { server.endpoint } }
    end)

    teardown(function()
      if server then server:stop() end
    end)

    it("grants, lists, inspects and revokes leases", co(function()
      local lease, _, h = assert(etcd:grant(30))
      assert.equal("integer", math.type(lease.id))
      assert.equal(30, lease.ttl)
      assert.is_true(h.revision > 0)
      local mine = assert(etcd:grant(30, { id = 0x1234567 }))
      assert.equal(0x1234567, mine.id)
      local ids = assert(etcd:leases())
      table.sort(ids)
      assert.truthy(#ids >= 2)
      local found = 0
      for _, id in ipairs(ids) do
        if id == lease.id or id == mine.id then found = found + 1 end
      end
      assert.equal(2, found)
      assert(etcd:put("lease/a", "1", { lease = lease.id }))
      assert(etcd:put("lease/b", "2", { lease = lease.id }))
      local info = assert(etcd:time_to_live(lease.id, { keys = true }))
      assert.equal(lease.id, info.id)
      assert.equal(30, info.granted_ttl)
      assert.is_true(info.ttl > 0 and info.ttl <= 30)
      table.sort(info.keys)
      assert.same({ "lease/a", "lease/b" }, info.keys)
      assert.is_nil(etcd:time_to_live(lease.id).keys)
      assert.equal(30, (etcd:keepalive_once(lease.id)))
      assert(etcd:revoke(lease.id))
      assert.equal(0, count(etcd, "lease/"))
      assert.equal(-1, etcd:time_to_live(lease.id).ttl)
      local _, err = etcd:revoke(lease.id)
      assert.equal("not_found", err.kind)
      _, err = etcd:keepalive_once(lease.id)
      assert.equal("lost", err.kind)
      assert(etcd:revoke(mine.id))
    end))

    it("keeps a lease alive until stopped, then lets it expire", co(function()
      local lease = assert(etcd:grant(2))
      assert(etcd:put("ka/key", "v", { lease = lease.id }))
      local keeper = etcd:keepalive(lease.id, { ttl = lease.ttl })
      coord.sleep(3.5)
      assert.equal("v", etcd:get("ka/key").value)
      assert.equal(2, keeper.ttl)
      keeper:stop()
      assert.is_true((keeper:wait()))
      coord.sleep(3.5)
      assert.is_nil(etcd:get("ka/key"))
      assert.equal(-1, etcd:time_to_live(lease.id).ttl)
    end))

    it("stops a keeper at the end of a <close> scope", co(function()
      local lease = assert(etcd:grant(2))
      do
        local keeper <close> = etcd:keepalive(lease.id)
        coord.sleep(0.1)
        assert.is_nil(keeper.err)
      end
      coord.sleep(3.5)
      assert.equal(-1, etcd:time_to_live(lease.id).ttl)
    end))

    it("reports a lease lost when the server no longer has it", co(function()
      local lease = assert(etcd:grant(3))
      local lost
      local keeper = etcd:keepalive(lease.id, { on_lost = function(err) lost = err end })
      local ok, out = server:ctl(("lease revoke %x"):format(lease.id))
      assert.is_true(ok, out)
      local res, err = coord.timeout(5, keeper.wait, keeper)
      assert.is_nil(res)
      assert.equal("lost", err.kind)
      assert.equal(lease.id, err.lease)
      assert.equal(err, lost)
      assert.equal(err, keeper.err)
    end))

    it("grants a lock contended by 10 coroutines to one at a time", co(function()
      local holding, max_holding, order = 0, 0, {}
      local fns = {}
      for i = 1, 10 do
        fns[i] = function()
          -- the default 60 s lease: with long polls in flight the engine's poll can overshoot
          -- a timer by seconds (reported), which made 10 s leases expire between keepalives
          local lock = assert(etcd:lock("locks/ten"))
          holding = holding + 1
          max_holding = math.max(max_holding, holding)
          order[#order + 1] = i
          -- while held, the holder's key is the oldest of the waiters'
          local kvs = assert(etcd:range("locks/ten/", { prefix = true, sort_target = "create" }))
          assert.equal(lock.key, kvs[1].key)
          coord.sleep(0.05)
          holding = holding - 1
          assert(etcd:unlock(lock))
        end
      end
      local results = coord.timeout(30, coord.gather, table.unpack(fns))
      assert.is_table(results)
      assert.equal(10, #order)
      assert.equal(1, max_holding)
      assert.equal(0, count(etcd, "locks/ten/"))
    end))

    it("gives up waiting for a lock after its timeout and gives its lease back", co(function()
      local held = assert(etcd:lock("locks/t"))
      assert.matches("^locks/t/", held.key)
      local before = #assert(etcd:leases())
      local lock, err = etcd:lock("locks/t", { timeout = 0.5 })
      assert.is_nil(lock)
      assert.equal("timeout", err.kind)
      eventually("lease given back", function() return #assert(etcd:leases()) == before end)
      assert.equal(1, count(etcd, "locks/t/"))
      -- a canceled waiter gives its lease back too
      local res, terr = coord.timeout(0.5, etcd.lock, etcd, "locks/t")
      assert.is_nil(res)
      assert.equal("timeout", terr.kind)
      eventually("lease given back", function() return #assert(etcd:leases()) == before end)
      assert(held:unlock())
      assert.is_true(held:unlock())
      assert.equal(0, count(etcd, "locks/t/"))
    end))

    it("releases a lock at the end of a <close> scope", co(function()
      do
        local lock <close> = assert(etcd:lock("locks/c"))
        assert.equal(1, count(etcd, "locks/c/"))
      end
      assert.equal(0, count(etcd, "locks/c/"))
    end))

    it("excludes and is excluded by etcdctl lock", co(function()
      local lock = assert(etcd:lock("locks/ctl"))
      local log = os.tmpname()
      local proc = server:ctl_spawn("lock locks/ctl echo got-it", log)
      eventually("etcdctl waits", function() return count(etcd, "locks/ctl/") == 2 end, log)
      assert.equal("", servers.read_file(log))
      assert(etcd:unlock(lock))
      eventually("etcdctl gets the lock", function() return not proc:alive() end, log)
      assert.matches("got%-it", servers.read_file(log))
      proc:stop()

      proc = server:ctl_spawn("lock locks/ctl2 -- sh -c 'echo held; sleep 1'", log)
      eventually("etcdctl holds", function() return (servers.read_file(log) or ""):find("held") ~= nil end, log)
      lock = assert(etcd:lock("locks/ctl2", { timeout = 10 }))
      -- by the time coord holds it, etcdctl has let go
      assert.equal(1, count(etcd, "locks/ctl2/"))
      assert(etcd:unlock(lock))
      proc:stop()
      os.remove(log)
    end))

    it("campaigns, proclaims, observes and resigns", co(function()
      assert.is_nil(etcd:leader("elect/a"))
      local me = assert(etcd:campaign("elect/a", "one"))
      assert.matches("^elect/a/", me.key)
      assert.equal("integer", math.type(me.rev))
      local kv = assert(etcd:leader("elect/a"))
      assert.equal("one", kv.value)
      assert.equal(me.key, kv.key)
      local obs <close> = assert(etcd:observe("elect/a"))
      assert.equal("one", assert(obs:next()).value)
      assert(etcd:proclaim(me, "two"))
      assert.equal("two", assert(obs:next()).value)
      local other = coord.spawn(function()
        local l = assert(etcd:campaign("elect/a", "three"))
        return l
      end)
      assert(etcd:resign(me))
      assert.is_true(me:resign())
      assert.equal("three", assert(obs:next()).value)
      local ok, l = other:join()
      assert.is_true(ok)
      assert.equal("three", etcd:leader("elect/a").value)
      local _, err = etcd:proclaim(me, "stale")
      assert.is_truthy(err)
      assert(l:resign())
    end))

    it("returns lock, campaign, leader and observe results in the 0.2 shape", co(function()
      local none = table.pack(etcd:leader("elect/shape"))
      assert.equal(3, none.n)
      assert.is_nil(none[1])
      assert.is_nil(none[2])
      assert.is_truthy(none[3].revision)
      local me, err, h = etcd:campaign("elect/shape", "one")
      assert.is_nil(err)
      assert.equal(me.header, h)
      assert.equal(me.rev, h.revision)
      local ok, perr, ph = etcd:proclaim(me, "two")
      assert.is_true(ok)
      assert.is_nil(perr)
      assert.is_true(ph.revision > h.revision)
      local kv, lerr, lh = etcd:leader("elect/shape")
      assert.equal("two", kv.value)
      assert.is_nil(lerr)
      assert.equal(ph.revision, lh.revision)
      local lock, kerr, kh = etcd:lock("locks/shape")
      assert.is_nil(kerr)
      assert.equal(lock.rev, kh.revision)
      local uok, uerr, uh = etcd:unlock(lock)
      assert.is_true(uok)
      assert.is_nil(uerr)
      assert.is_true(uh.revision > kh.revision)
      assert.equal(1, select("#", etcd:unlock(lock))) -- already released: just true
      -- an observer made in a generic for is closed when the loop is left
      local stats = require("coord.etcd.watch").stats
      local before = stats(etcd).watches
      local seen
      for lkv, _, oh in etcd:observe("elect/shape") do
        seen = lkv.value
        assert.is_truthy(oh.revision)
        assert.equal(before + 1, stats(etcd).watches)
        break
      end
      assert.equal("two", seen)
      assert.equal(before, stats(etcd).watches)
      ok, err, h = etcd:resign(me)
      assert.is_true(ok)
      assert.is_nil(err)
      assert.is_truthy(h.revision)
      -- on the caller's lease, a second campaign finds the key and proclaims its own value,
      -- within what is left of its timeout
      local lease = assert(etcd:grant(30))
      assert(etcd:campaign("elect/own", "one", { lease = lease.id }))
      local again, aerr, ah = etcd:campaign("elect/own", "two", { lease = lease.id, timeout = 10 })
      assert.is_nil(aerr)
      assert.equal(again.header, ah)
      assert.equal("two", assert(etcd:leader("elect/own")).value)
      assert(etcd:revoke(lease.id))
    end))

    it("interoperates with etcdctl elect", co(function()
      local me = assert(etcd:campaign("elect/ctl", "coord-value"))
      local log = os.tmpname()
      local proc = server:ctl_spawn("elect -l elect/ctl", log)
      eventually("etcdctl sees coord lead", function()
        return (servers.read_file(log) or ""):find("coord-value", 1, true) ~= nil
      end, log)
      proc:stop()
      assert(me:resign())

      proc = server:ctl_spawn("elect elect/ctl2 ctl-value", log)
      local obs <close> = assert(etcd:observe("elect/ctl2"))
      assert.equal("ctl-value", assert(coord.timeout(10, obs.next, obs)).value)
      -- etcdctl prints its key once its campaign call has returned; a signal before that
      -- makes it exit without resigning, leaving its key to its lease's 60 s
      eventually("etcdctl knows it leads", function()
        return (servers.read_file(log) or ""):find("ctl-value", 1, true) ~= nil
      end, log)
      local mine = coord.spawn(function() return assert(etcd:campaign("elect/ctl2", "coord-next")) end)
      proc:stop() -- etcdctl resigns on a signal once elected
      assert.equal("coord-next", assert(coord.timeout(10, obs.next, obs)).value)
      local ok, l = mine:join()
      assert.is_true(ok)
      assert(l:resign())
      os.remove(log)
    end))

    it("raises on wrong argument types", co(function()
      assert.has_error(function() etcd:grant("5") end, "bad argument #1 to 'grant' (integer expected, got string)")
      assert.has_error(function() etcd:revoke(nil) end)
      assert.has_error(function() etcd:keepalive(1, { on_lost = 5 }) end)
      assert.has_error(function() etcd:lock(5) end)
      assert.has_error(function() etcd:unlock({}) end)
      assert.has_error(function() etcd:campaign("e", 5) end)
      assert.has_error(function() etcd:resign({}) end)
    end))
  end)
end

for _, version in ipairs { "3.4", "3.5" } do
  describe("coord.etcd lease keepers given back on etcd " .. version, function()
    local server, etcd

    setup(function()
      server = servers.etcd { version = version }
      etcd = etcd_mod.new { endpoints = { server.endpoint } }
    end)

    teardown(function()
      if server then server:stop() end
    end)

    -- True once the lease is gone or its TTL has fallen below what a live keeper keeps.
    local function not_kept(id, ttl)
      local info = assert(etcd:time_to_live(id))
      return info.ttl == -1 or info.ttl < ttl - 1
    end

    it("stops keeping a lease whose owning task is canceled or whose own task is", co(function()
      local lease = assert(etcd:grant(4))
      local got = coord.queue()
      local t = coord.spawn(function()
        local k <close> = etcd:keepalive(lease.id, { ttl = lease.ttl })
        got:put(k)
        coord.sleep(60)
      end)
      local k = got:get()
      assert.is_true(t:cancel())
      eventually("lease not kept alive", function() return not_kept(lease.id, 4) end)
      assert.is_true((k:wait()))
      assert.is_true(k.task.done)

      local lease2 = assert(etcd:grant(4))
      local k2 = etcd:keepalive(lease2.id, { ttl = lease2.ttl })
      assert.is_true(k2.task:cancel())
      assert.is_true((k2:wait()))
      k2:stop()
      eventually("lease not kept alive", function() return not_kept(lease2.id, 4) end)
      assert(etcd:revoke(lease.id))
      assert(etcd:revoke(lease2.id))
    end))

    it("lets an on_lost hook stop its keeper without raising", co(function()
      local reported = {}
      local old = coord.on_error(function(err) reported[#reported + 1] = err end)
      local lease = assert(etcd:grant(3))
      local k = etcd:keepalive(lease.id, { on_lost = function(_, keeper) keeper:stop() end })
      assert(etcd:revoke(lease.id))
      local res, err = coord.timeout(5, k.wait, k)
      assert.is_nil(res)
      assert.equal("lost", err.kind)
      assert.equal(lease.id, err.lease)
      coord.on_error(old)
      assert.same({}, reported)
    end))
  end)
end
