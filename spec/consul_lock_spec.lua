-- coord.consul locks, semaphores and elections against a real Consul dev agent and the
-- `consul lock` CLI (which uses the Go client's recipes).
local coord = require "coord"
local consul_mod = require "coord.consul"
local lock_mod = require "coord.consul.lock"
local sem_mod = require "coord.consul.semaphore"
local core = require "coord.core"
local servers = require "servers"

-- Runs a test body as one coroutine: waits inside coord.run, never from the main chunk
-- (the engine's loop can block until the next timer when a wait from the main chunk is
-- completed by another coroutine).
local function run(fn)
  return function() coord.run(fn) end
end

describe("coord.consul locks", function()
  local server, c
  local procs = {}
  setup(function()
    server = servers.consul {}
    server:wait_node()
    c = consul_mod.new { address = server.address }
  end)
  teardown(function()
    for _, p in ipairs(procs) do p:stop() end
    server:stop()
  end)

  -- Waits with blocking reads until pred(entry) holds for key (bounded by `limit` seconds).
  local function await_key(key, pred, limit)
    local deadline, index = coord.now() + (limit or 20), nil
    while true do
      local e, err, meta = c.kv:get(key, { index = index, wait = index and 5 })
      assert(not err, tostring(err))
      if pred(e) then return e end
      assert(coord.now() < deadline, "timed out waiting on " .. key)
      index = meta.index
    end
  end

  -- True when key stays absent for `s` seconds (a blocking read that sees no change).
  local function stays_absent(key, s)
    local e, _, meta = c.kv:get(key)
    if e then return false end
    e = c.kv:get(key, { index = meta.index, wait = s })
    return e == nil
  end

  -- Starts `consul lock <args> <cmd>` in the background; cmd sees CONSUL_HTTP_ADDR.
  local function cli_lock(args, cmd)
    local p = servers.spawn("env " .. server:cli_cmd() .. " lock " .. args .. " " .. servers.sh_quote(cmd),
      os.tmpname())
    procs[#procs + 1] = p
    return p
  end

  local function kv_put_cmd(key, value)
    return servers.sh_quote(servers.bin.consul) .. " kv put " .. key .. " " .. value
  end

  -- Waits (blocking queries on the session list) for a session other than `mine` to exist.
  local function await_other_session(mine)
    local deadline, index = coord.now() + 20, nil
    while true do
      local list, _, meta = assert(c.session:list { index = index, wait = 5 })
      for _, e in ipairs(list) do
        if not mine[e.id] then return e end
      end
      assert(coord.now() < deadline, "no other session appeared")
      index = meta.index
    end
  end

  describe("lock", function()
    it("takes a key with the Go lock flag and gives it back", run(function()
      local l = assert(c:lock("basic/.lock", { value = "me" }))
      local e = assert(c.kv:get("basic/.lock"))
      assert.are.same({ l.session, lock_mod.FLAG, "me" }, { e.session, e.flags, e.value })
      assert.are.equal(0x2ddccbc058a50c18, e.flags)
      local none, err = c:lock("basic/.lock", { timeout = 0.5 })
      assert.is_nil(none)
      assert.are.equal("timeout", err.kind)
      none, err = c:lock("basic/.lock", { timeout = 0 })
      assert.is_nil(none)
      assert.are.equal("timeout", err.kind)
      assert.is_true(assert(c:lock("basic/other", { timeout = 0 })):unlock())
      assert.is_true(l:unlock())
      assert.is_nil(c.kv:get("basic/.lock"))
      assert.is_nil(c.session:info(l.session))
      assert.is_nil(l.lost)
      assert.is_true(l:wait_lost())
      assert.is_true(l:unlock())
      do
        local l2 <close> = assert(c:lock("basic/.lock", { timeout = 5 }))
        l = l2
      end
      assert.is_nil(c.kv:get("basic/.lock"))
    end))

    it("refuses a key that is not a lock key", run(function()
      assert(c.kv:put("plain", "x", { flags = 7 }))
      local l, err = c:lock("plain", { timeout = 2 })
      assert.is_nil(l)
      assert.are.equal("conflict", err.kind)
      assert.are.equal(0, #assert(c.session:list()))
      assert.has_error(function() c:lock(1) end, "bad argument #1 to 'lock' (string expected, got integer)")
      assert.has_error(function() c:lock("k", { timeout = "1" }) end)
    end))

    it("lets one of several contending coroutines in at a time", run(function()
      local inside, max, done, sessions = 0, 0, 0, {}
      local function worker()
        local l <close> = assert(c:lock("contended/.lock", { timeout = 30 }))
        sessions[#sessions + 1] = l.session
        inside = inside + 1
        max = math.max(max, inside)
        assert.are.equal(l.session, assert(c.kv:get("contended/.lock")).session)
        coord.sleep(0.05)
        inside = inside - 1
        done = done + 1
      end
      coord.gather(worker, worker, worker, worker, worker)
      assert.are.same({ 1, 5 }, { max, done })
      for _, id in ipairs(sessions) do assert.is_nil(c.session:info(id)) end
    end))

    it("waits while `consul lock` holds the prefix, and gets it when the CLI lets go", run(function()
      local p = cli_lock("cliheld", kv_put_cmd("cli/held", "yes") .. "; sleep 60")
      await_key("cli/held", function(e) return e ~= nil end)
      local e = assert(c.kv:get("cliheld/.lock"))
      assert.are.equal(lock_mod.FLAG, e.flags)
      assert.is_string(e.session)
      local l, err = c:lock("cliheld/.lock", { timeout = 1 })
      assert.is_nil(l)
      assert.are.equal("timeout", err.kind)
      local t = coord.spawn(function() return c:lock("cliheld/.lock", { timeout = 20 }) end)
      p:stop() -- SIGTERM: the CLI kills its child and releases the lock
      local ok, got = t:join()
      assert.is_true(ok)
      assert.are.equal(lock_mod.FLAG, assert(c.kv:get("cliheld/.lock")).flags)
      assert.is_true(got:unlock())
    end))

    it("makes `consul lock` wait while coord holds the prefix", run(function()
      local l = assert(c:lock("coordheld/.lock"))
      local p = cli_lock("coordheld", kv_put_cmd("cli/ran", "yes"))
      await_other_session { [l.session] = true }
      assert.is_true(stays_absent("cli/ran", 1))
      assert.is_nil(l.lost)
      assert.is_true(l:unlock())
      await_key("cli/ran", function(e2) return e2 ~= nil end)
      p:stop()
    end))

    it("reports a lock lost when its session is destroyed", run(function()
      local seen
      local l = assert(c:lock("lost/.lock", { on_lost = function(err) seen = err end }))
      assert(c.session:destroy(l.session))
      local none, err = coord.timeout(10, l.wait_lost, l)
      assert.is_nil(none)
      assert.are.equal("lost", err.kind)
      assert.are.equal(err, l.lost)
      assert.are.equal(err, seen)
      assert.is_true(l:unlock())
    end))

    it("is released when its session expires unrenewed, while a self-renewing one is kept", run(function()
      -- Consul expires a session between TTL and 2 x TTL after its last renewal
      local kept = assert(c:lock("kept/.lock"))
      local sid = assert(c.session:create { ttl = 10, lock_delay = 0 })
      local l = assert(c:lock("expiring/.lock", { session = sid }))
      local got
      local t = coord.spawn(function() got = assert(c:lock("expiring/.lock", { timeout = 40 })) end)
      local _, err = coord.timeout(40, l.wait_lost, l)
      assert.are.equal("lost", err.kind)
      assert.is_nil(c.session:info(sid))
      assert.is_true(t:join())
      assert.are.equal(got.session, assert(c.kv:get("expiring/.lock")).session)
      assert.is_nil(kept.lost)
      assert.is_truthy(c.session:info(kept.session))
      assert.are.equal(kept.session, assert(c.kv:get("kept/.lock")).session)
      assert.is_true(got:unlock())
      assert.is_true(l:unlock())
      assert.is_true(kept:unlock())
    end))
  end)

  describe("semaphore", function()
    it("lets at most 2 of 5 contending coroutines hold a slot", run(function()
      local inside, max, done, sessions = 0, 0, 0, {}
      local function worker()
        local s <close> = assert(c:semaphore("sem2", 2):acquire { timeout = 30 })
        sessions[#sessions + 1] = s.session
        inside = inside + 1
        max = math.max(max, inside)
        local st = core.json_decode(assert(c.kv:get("sem2/.lock")).value)
        local n = 0
        for _ in pairs(st.Holders) do n = n + 1 end
        assert.is_true(n <= 2 and st.Holders[s.session] and st.Limit == 2)
        coord.sleep(0.1)
        inside = inside - 1
        done = done + 1
      end
      coord.gather(worker, worker, worker, worker, worker)
      assert.are.same({ 2, 5 }, { max, done })
      for _, id in ipairs(sessions) do assert.is_nil(c.session:info(id)) end
      local keys = assert(c.kv:keys("sem2/"))
      assert.are.same({ "sem2/.lock" }, keys)
      assert.are.equal(sem_mod.FLAG, assert(c.kv:get("sem2/.lock")).flags)
    end))

    it("writes the Go recipe's keys and refuses another limit or a lock key", run(function()
      local s = assert(c:semaphore("sem3/", 1, { value = "v" }):acquire())
      local e = assert(c.kv:get("sem3/" .. s.session))
      assert.are.same({ s.session, sem_mod.FLAG, "v" }, { e.session, e.flags, e.value })
      assert.are.equal("delete", assert(c.session:info(s.session)).behavior)
      local st = core.json_decode(assert(c.kv:get("sem3/.lock")).value)
      assert.are.same({ Limit = 1, Holders = { [s.session] = true } }, st)
      local none, err = c:semaphore("sem3", 2):acquire { timeout = 1 }
      assert.is_nil(none)
      assert.are.equal("conflict", err.kind)
      none, err = c:lock("sem3/.lock", { timeout = 1 })
      assert.is_nil(none)
      assert.are.equal("conflict", err.kind)
      none, err = c:semaphore("sem3", 1):acquire { timeout = 0.5 }
      assert.is_nil(none)
      assert.are.equal("timeout", err.kind)
      none, err = c:semaphore("sem3", 1):acquire { timeout = 0 }
      assert.are.equal("timeout", err.kind)
      assert.is_true(assert(c:semaphore("sem4", 1):acquire { timeout = 0 }):release())
      assert.is_true(s:release())
      assert.is_nil(c.kv:get("sem3/" .. s.session))
      assert.are.equal(1, #assert(c.kv:keys("sem3/")))
      assert.has_error(function() c:semaphore("x", 0) end)
    end))

    it("reports a slot lost when its session is destroyed", run(function()
      local s = assert(c:semaphore("semlost", 1):acquire())
      assert(c.session:destroy(s.session))
      local _, err = coord.timeout(10, s.wait_lost, s)
      assert.are.equal("lost", err.kind)
      assert.is_true(s:release())
      local other <close> = assert(c:semaphore("semlost", 1):acquire { timeout = 5 })
    end))

    it("shares its slots with `consul lock -n 2`", run(function()
      local a = assert(c:semaphore("semcli", 2):acquire())
      local b = assert(c:semaphore("semcli", 2):acquire())
      local p = cli_lock("-n 2 semcli", kv_put_cmd("cli/sem", "yes"))
      await_other_session { [a.session] = true, [b.session] = true }
      assert.is_true(stays_absent("cli/sem", 1))
      assert.is_true(a:release())
      await_key("cli/sem", function(e) return e ~= nil end)
      p:stop()
      assert.is_true(b:release())
    end))
  end)

  describe("election", function()
    it("elects one leader, lets observers follow it, and fails over", run(function()
      local opts = { lock_delay = 0 }
      local e1, e2 = c:election("elect/leader", opts), c:election("elect/leader", opts)
      local none, nerr, nmeta = e1:leader()
      assert.is_nil(none)
      assert.is_nil(nerr)
      assert.are.equal("integer", math.type(nmeta.index))
      local leaders = coord.queue()
      local watcher = coord.spawn(function()
        for leader in c:election("elect/leader"):observe() do
          if leader then leaders:put(leader.value) end
        end
      end)
      assert(e1:campaign("one"))
      assert.is_true(e1:is_leader())
      assert.are.equal("one", leaders:get())
      assert.are.equal("one", assert(e2:leader()).value)
      local t = coord.spawn(function() return e2:campaign("two", { timeout = 20 }) end)
      assert.is_true(e1:resign())
      assert.is_false(e1:is_leader())
      assert.is_true((t:join()))
      assert.is_true(e2:is_leader())
      assert.are.equal("two", leaders:get())
      -- a leader whose session dies is replaced
      local t1 = coord.spawn(function() return e1:campaign("three", { timeout = 20 }) end)
      assert(c.session:destroy(e2.lock.session))
      assert.is_true((t1:join()))
      assert.are.equal("three", leaders:get())
      assert.are.equal("lost", select(2, e2.lock:wait_lost()).kind)
      assert.is_false(e2:is_leader())
      assert.is_true(e2:resign())
      assert.are.equal("three", assert(e2:leader()).value)
      watcher:cancel()
      assert.is_true(e1:resign())
      assert.is_nil(e1:leader())
    end))
  end)

  describe("giving back", function()
    -- Waits (blocking queries on the session list) until exactly the sessions in `held`
    -- exist: what a canceled or timed-out acquisition gives back is released in a task of
    -- its own, after the cancel returns.
    local function await_sessions(held, limit)
      local deadline, index = coord.now() + (limit or 20), nil
      while true do
        local list, _, meta = assert(c.session:list { index = index, wait = 2 })
        local ids, n, want = {}, 0, 0
        for _, e in ipairs(list) do ids[e.id], n = true, n + 1 end
        local same = true
        for id in pairs(held) do
          want = want + 1
          if not ids[id] then same = false end
        end
        if same and n == want then return end
        assert(coord.now() < deadline, ("%d sessions left, %d expected"):format(n, want))
        index = meta.index
      end
    end

    -- The live holders of a semaphore (holders whose contender key still exists).
    local function live_holders(prefix)
      local e = c.kv:get(prefix .. "/.lock")
      local n = 0
      if not e then return 0 end
      for id in pairs(core.json_decode(e.value).Holders) do
        if c.kv:get(prefix .. "/" .. id) then n = n + 1 end
      end
      return n
    end

    it("leaves no session behind when a contended lock times out under coord.timeout", run(function()
      local l <close> = assert(c:lock("give/contended"))
      for _ = 1, 3 do
        local none, err = coord.timeout(0.5, c.lock, c, "give/contended")
        assert.is_nil(none)
        assert.are.equal("timeout", err.kind)
      end
      local none, err = c:lock("give/contended", { timeout = 0.3 })
      assert.is_nil(none)
      assert.are.equal("timeout", err.kind)
      await_sessions { [l.session] = true }
      assert.are.equal(l.session, assert(c.kv:get("give/contended")).session)
    end))

    it("destroys the session of a lock held by a canceled task or a closed coroutine", run(function()
      local got = coord.queue()
      local t = coord.spawn(function()
        local l <close> = assert(c:lock("give/task"))
        got:put(l)
        coord.sleep(60)
      end)
      local l = got:get()
      assert.are.equal(l.session, assert(c.kv:get("give/task")).session)
      assert.is_true(t:cancel())
      await_sessions {}
      assert.is_nil(c.kv:get("give/task"))
      assert.is_true(l.released)

      local co = coroutine.create(function()
        local l2 <close> = assert(c:lock("give/co"))
        got:put(l2)
        coord.sleep(60)
      end)
      coroutine.resume(co)
      l = got:get()
      assert.are.equal(l.session, assert(c.kv:get("give/co")).session)
      assert.is_true(coroutine.close(co))
      await_sessions {}
      local e = c.kv:get("give/co")
      assert.is_nil(e and e.session)
    end))

    it("releases the slot of a semaphore held by a canceled task or a closed coroutine", run(function()
      local got = coord.queue()
      local t = coord.spawn(function()
        local s <close> = assert(c:semaphore("give/sem", 1):acquire())
        got:put(s)
        coord.sleep(60)
      end)
      local s = got:get()
      assert.are.equal(1, live_holders("give/sem"))
      assert.is_true(t:cancel())
      await_sessions {}
      assert.are.equal(0, live_holders("give/sem"))
      assert.are.same({ "give/sem/.lock" }, assert(c.kv:keys("give/sem/")))

      local co = coroutine.create(function()
        local s2 <close> = assert(c:semaphore("give/sem", 1):acquire())
        got:put(s2)
        coord.sleep(60)
      end)
      coroutine.resume(co)
      s = got:get()
      assert.is_truthy(c.kv:get("give/sem/" .. s.session))
      assert.is_true(coroutine.close(co))
      await_sessions {}
      assert.are.equal(0, live_holders("give/sem"))
      local again <close> = assert(c:semaphore("give/sem", 1):acquire { timeout = 0 })
    end))

    -- Cancels the acquiring task `k` loop iterations after its acquire PUT starts (observed
    -- by wrapping the client's kv:put), so some cancels land while the PUT is in flight.
    local function cancel_during_acquire(n, acquire)
      local c2 = consul_mod.new { address = server.address }
      local kv = c2.kv
      local put, armed, inflight = kv.put, nil, 0
      kv.put = function(self, key, value, o)
        local t
        if o and o.acquire and armed then
          local k = armed.k
          t, armed = armed.task, nil
          coord.spawn(function()
            for _ = 1, k do coord.sleep(0) end
            t:cancel()
          end)
        end
        local ok, err = put(self, key, value, o)
        if t and t.done then inflight = inflight + 1 end -- canceled before the reply was seen
        return ok, err
      end
      local outcomes = {}
      for i = 1, n do
        local t = coord.spawn(function()
          local h <close> = acquire(c2)
          coord.sleep(60)
        end)
        armed = { k = i % 6, task = t }
        local _, err = t:join()
        assert.are.equal("canceled", err.kind)
        outcomes[#outcomes + 1] = armed == nil
      end
      for _, fired in ipairs(outcomes) do assert.is_true(fired) end
      -- k = 0 cancels before the acquiring task sees the reply, whatever the timing
      assert.is_true(inflight >= n // 6, inflight .. " of " .. n .. " canceled in flight")
      return inflight
    end

    it("gives a lock back when canceled at varied points around its acquire PUT", run(function()
      cancel_during_acquire(30, function(c2)
        return assert(c2:lock("give/inflight", { lock_delay = 0, timeout = 20 }))
      end)
      await_sessions({}, 30)
      local e = c.kv:get("give/inflight")
      assert.is_nil(e and e.session)
      local l <close> = assert(c:lock("give/inflight", { timeout = 0 }))
    end))

    it("gives a semaphore slot back when canceled at varied points around its acquire PUT", run(function()
      cancel_during_acquire(30, function(c2)
        return assert(c2:semaphore("give/seminflight", 1, { lock_delay = 0 }):acquire { timeout = 20 })
      end)
      await_sessions({}, 30)
      assert.are.equal(0, live_holders("give/seminflight"))
      local s <close> = assert(c:semaphore("give/seminflight", 1):acquire { timeout = 0 })
    end))

    it("lets an on_lost hook unlock without raising", run(function()
      local reported = {}
      local old = coord.on_error(function(err) reported[#reported + 1] = err end)
      local seen = coord.queue()
      local l
      l = assert(c:lock("give/hook", { on_lost = function(err)
        assert(l:unlock())
        assert(c.kv:put("give/hook-after", "done")) -- the hook can still wait after unlocking
        seen:put(err)
      end }))
      assert(c.session:destroy(l.session))
      assert.are.equal("lost", assert(coord.timeout(10, seen.get, seen)).kind)
      assert.is_true(l.released)
      assert.are.equal("done", assert(c.kv:get("give/hook-after")).value)
      await_sessions {}
      coord.on_error(old)
      assert.are.same({}, reported)
    end))
  end)
end)
