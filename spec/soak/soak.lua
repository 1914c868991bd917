-- spec/soak/soak.lua: the soak and fault run. One process drives a 3-member etcd 3.5 cluster,
-- a Consul dev agent and the fault peer with mirrors, 1,000 etcd and 300 shared Consul
-- watches, locks, semaphores, elections, leases, sessions and CAS counters while a chaos task
-- kills etcd members and restarts the agent; then it checks the invariants. run{seconds = n}
-- returns the rows {name, value, bound, ok} (spec/soak_spec.lua, `make soak`).

local coord = require "coord"
local core = require "coord.core"
local servers = require "servers"
local helpers = require "helpers"
local etcd_mod = require "coord.etcd"
local consul_mod = require "coord.consul"
local watch_mod = require "coord.etcd.watch"

local M = {}

local W_PREFIX = "soak/w/"    -- etcd watched keys (and the etcd mirror's prefix)
local C_PREFIX = "soak/cw/"   -- Consul watched keys (and the Consul mirror's prefix)
local DOWN_FOR = 4            -- seconds a killed etcd member or the stopped agent stays down
local GRACE = 6               -- seconds after a restart still counted as chaos (endpoint backoff is at most 5 s)
local STALE_BOUND = 3         -- seconds within which a mirror must report a backend that went down
local HANDOVER_BOUND = 30     -- seconds a lock, semaphore or election may go without a new holder (outages included)
local IDLE_FOR = 25           -- seconds of the idle phase (more than two watch keepalive intervals)
local IDLE_CPU_FOR = 10       -- seconds over which the CPU of the idle watches is measured, before the load
local CATCH_UP = 30           -- seconds the checks wait for watches and mirrors to deliver
-- Established connections of this process at once, at most: requests in flight (writers,
-- counters, probes, 6 etcd and 13 Consul contenders, keepers, renewals, the streams) plus what
-- libcurl keeps for reuse. A leak grows past them in a long run.
local MAX_CONNS = { etcd = 48, consul = 64 }

local function pad(i) return ("%04d"):format(i) end

---------------------------------------------------------------------------------------------
-- measurements of this process

local function read(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local PID = tonumber(read("/proc/self/stat"):match("^(%d+)"))
local CLK_TCK = tonumber((select(2, servers.sh("getconf CLK_TCK")):match("%d+"))) or 100

local function rss_kb()
  return tonumber(read("/proc/self/status"):match("VmRSS:%s*(%d+)"))
end

-- user + system CPU seconds of this process
local function cpu_seconds()
  local st = read("/proc/self/stat"):gsub("^%d+ %b() ", "")
  local f = {}
  for x in st:gmatch("%S+") do f[#f + 1] = x end
  -- after pid and comm: state is field 1, utime 12, stime 13
  return (tonumber(f[12]) + tonumber(f[13])) / CLK_TCK
end

-- Established TCP connections of this process, counted by remote port.
local function connections()
  local _, out = servers.sh("ss -Htnp state established")
  local by_port = {}
  for line in out:gmatch("[^\n]+") do
    if line:find("pid=" .. PID .. ",", 1, true) then
      local _, _, _, peer = line:match("^(%S+)%s+(%S+)%s+(%S+)%s+(%S+)")
      local port = peer and tonumber(peer:match(":(%d+)$"))
      if port then by_port[port] = (by_port[port] or 0) + 1 end
    end
  end
  return by_port
end

---------------------------------------------------------------------------------------------
-- the shared state of one run

local function new_state(opts)
  return {
    seconds = opts.seconds,
    log = opts.log or function() end,
    running = true,
    windows = { etcd = {}, consul = {} }, -- {from, to} periods of chaos per backend
    errors = { etcd = {}, consul = {} },  -- {t, kind, what}
    consul_epoch = 1,
    chaos = { leader = 0, stream = 0, consul = 0, peer = 0 },
    stale = {},                           -- per Consul outage: seconds until the mirror said so (false: never)
    rss = {},                             -- {t, kb}
    conns = { etcd = 0, consul = 0 },     -- the most seen at once during the run
    tasks = {},                           -- watch readers
    prim_tasks = {},                      -- contenders and session holders
  }
end

local function in_chaos(S, backend, t)
  for _, w in ipairs(S.windows[backend]) do
    if t >= w[1] and t <= (w[2] or math.huge) then return true end
  end
  return false
end

local function note(S, backend, what, err)
  local list = S.errors[backend]
  list[#list + 1] = { t = coord.now(), kind = err and err.kind or "?", what = what,
    text = tostring(err):sub(1, 160) }
end

-- Whether a failed write may have been applied. The error says so when the client knows
-- (`maybe_applied`); otherwise only a request that never left (or was refused by the server)
-- is counted as certainly not applied.
local NOT_SENT = { connect = true, resolve = true, invalid = true, permission = true, auth = true }
local function maybe_applied(err)
  if type(err) == "table" and err.maybe_applied ~= nil then return err.maybe_applied and true or false end
  if type(err) ~= "table" then return true end
  if NOT_SENT[err.kind] then return false end
  if err.kind == "unavailable" and not err.status then return false end -- every endpoint backing off
  return true
end

local function spawn(S, fn, ...)
  local t = coord.spawn(fn, ...)
  S.tasks[#S.tasks + 1] = t
  return t
end

-- Sleeps s seconds, or less if the run stops meanwhile (pacing of the workers).
local function pace(S, s)
  local deadline = coord.now() + s
  while S.running and coord.now() < deadline do coord.sleep(math.min(0.5, deadline - coord.now())) end
end

local function wait_for(what, check, limit)
  return (pcall(servers.until_true, what, check, limit))
end

---------------------------------------------------------------------------------------------
-- etcd watches and the writer of their keys

local function etcd_watches(S, n)
  S.ew = { keys = {}, watches = {}, got = {}, revs = {}, acked = {}, uncertain = {}, refused = {}, failed = 0 }
  local E = S.ew
  for i = 1, n do
    local key = W_PREFIX .. pad(i)
    E.keys[i], E.got[key], E.revs[key], E.acked[key], E.uncertain[key], E.refused[key] = key, {}, {}, {}, {}, {}
    E.watches[i] = S.etcd:watch(key)
  end
  for i = 1, n do assert(E.watches[i]:ready()) end
  for i = 1, n do
    local key, w = E.keys[i], E.watches[i]
    spawn(S, function()
      local got, revs = E.got[key], E.revs[key]
      for ev in w:events() do
        if ev.type == "put" then
          got[#got + 1], revs[#revs + 1] = ev.kv.value, ev.kv.mod_revision
        end
      end
      if w.error then E.failed = E.failed + 1 end
    end)
  end
end

-- A random key of keys that writer `which` of `of` owns (every of-th key from which on).
local function own_key(keys, which, of)
  local i = math.random(1, #keys)
  i = i - (i - which) % of
  if i < 1 then i = i + of end
  return keys[i]
end

local function etcd_writer(S, which, of)
  local E, seq = S.ew, {}
  while S.running do
    local key = own_key(E.keys, which, of)
    seq[key] = (seq[key] or 0) + 1
    local value = key .. "#" .. seq[key]
    local ok, err, h = S.etcd:put(key, value)
    if ok then
      local a = E.acked[key]
      a[#a + 1] = { value = value, rev = h.revision }
    else
      note(S, "etcd", "put", err)
      if maybe_applied(err) then E.uncertain[key][value] = true else E.refused[key][value] = true end
    end
    pace(S, 0.1)
  end
end

-- Checks each watched key's delivered values against the writer's history.
local function etcd_watch_check(S)
  local E = S.ew
  local caught = wait_for("etcd watches catching up", function()
    for _, key in ipairs(E.keys) do
      local a, revs = E.acked[key], E.revs[key]
      if #a > 0 and (revs[#revs] or 0) < a[#a].rev then return false end
    end
    return true
  end, CATCH_UP)
  local r = { lost = 0, dup = 0, twice = 0, order = 0, phantom = 0, acked = 0, uncertain = 0, caught = caught }
  for _, key in ipairs(E.keys) do
    local got, revs, seen = E.got[key], E.revs[key], {}
    for j, v in ipairs(got) do
      if j > 1 and revs[j] <= revs[j - 1] then
        if revs[j] == revs[j - 1] then r.dup = r.dup + 1 else r.order = r.order + 1 end
      elseif seen[v] then
        r.twice = r.twice + 1 -- the same value at two revisions: the write was applied twice
        local acked_at = "-"
        for _, a in ipairs(E.acked[key]) do
          if a.value == v then acked_at = a.rev end
        end
        local kv = S.etcd:get(key, { revision = revs[j] })
        S.log(("etcd write applied twice: %s = %s delivered at revisions %s (the last one: server has %s at %s), "
          .. "writer was told %s at %s"):format(key, v, table.concat(revs, ",", math.max(1, j - 3), j),
          kv and kv.value or "?", kv and kv.mod_revision or "?", E.uncertain[key][v] and "an error" or "success", acked_at))
      end
      seen[v] = true
      if not E.uncertain[key][v] then
        local known = false
        for _, a in ipairs(E.acked[key]) do
          if a.value == v then known = true break end
        end
        if not known then r.phantom = r.phantom + 1 end
      end
    end
    for _, a in ipairs(E.acked[key]) do
      r.acked = r.acked + 1
      if not seen[a.value] then r.lost = r.lost + 1 end
    end
    for _ in pairs(E.uncertain[key]) do r.uncertain = r.uncertain + 1 end
  end
  return r
end

---------------------------------------------------------------------------------------------
-- Consul watches and the writer of their keys (per epoch: a dev agent restart loses the data)

local function consul_watches(S, n)
  S.cw = { keys = {}, watches = {}, got = {}, acked = {}, pending = {}, final_wrong = 0, order = 0, dup = 0 }
  local C = S.cw
  for i = 1, n do
    local key = C_PREFIX .. pad(i)
    C.keys[i], C.got[key], C.acked[key], C.pending[key] = key, {}, false, {}
    local w = S.consul.kv:watch(key, { share = C_PREFIX, min_backoff = 0.1, max_backoff = 2 })
    C.watches[i] = w
    spawn(S, function()
      local got = C.got[key]
      for e in w do got[#got + 1] = e and e.value or false end
    end)
  end
  assert(wait_for("consul watches started", function()
    for _, key in ipairs(C.keys) do
      if #C.got[key] == 0 then return false end
    end
    return true
  end, 60))
end

-- The Consul writers hold one of these permits per operation; the chaos task takes them all
-- to stop the writers around an agent restart.
local CONSUL_WRITERS = 3
local CTR_PATH = "/v1/kv/soak/ctr" -- the Consul counter's key, as the fault peer sees it

local function consul_writer(S, which, of)
  local C, seq = S.cw, {}
  while S.running do
    local key = own_key(C.keys, which, of)
    do
      local permit <close> = S.gate:acquire()
      if not S.running then break end
      seq[key] = (seq[key] or 0) + 1
      local value = ("e%d:%d"):format(S.consul_epoch, seq[key])
      local ok, err = S.consul.kv:put(key, value)
      if ok then
        C.acked[key], C.pending[key] = value, {}
      else
        note(S, "consul", "put", err)
        if maybe_applied(err) then C.pending[key][value] = true end
      end
    end
    pace(S, 0.1)
  end
end

local function epoch_seq(v)
  local e, s = v:match("^e(%d+):(%d+)$")
  return tonumber(e), tonumber(s)
end

-- After the writers stopped: waits until every watch delivered its key's final value, then
-- counts the keys whose last delivered value is not it, and orders (values only grow).
local function consul_epoch_check(S)
  local C = S.cw
  local function final_ok(key)
    local got = C.got[key]
    local last = got[#got]
    return last == C.acked[key] or (last and C.pending[key][last]) or false
  end
  wait_for("consul watches final", function()
    for _, key in ipairs(C.keys) do
      if not final_ok(key) then return false end
    end
    return true
  end, CATCH_UP / 2)
  for _, key in ipairs(C.keys) do
    if not final_ok(key) then C.final_wrong = C.final_wrong + 1 end
  end
end

local function consul_order_check(S)
  local C = S.cw
  C.order, C.dup = 0, 0
  for _, key in ipairs(C.keys) do
    local pe, ps
    for _, v in ipairs(C.got[key]) do
      if v then
        local e, s = epoch_seq(v)
        if pe and (e < pe or (e == pe and s < ps)) then C.order = C.order + 1
        elseif pe and e == pe and s == ps then C.dup = C.dup + 1 end
        pe, ps = e, s
      end
    end
  end
end

-- A new epoch: the keys are gone; what was acknowledged before is no longer expected.
local function consul_new_epoch(S)
  for _, key in ipairs(S.cw.keys) do S.cw.acked[key], S.cw.pending[key] = false, {} end
end

---------------------------------------------------------------------------------------------
-- CAS counters: one writer per backend, increments resolved by re-reading after an error

local function new_counter()
  return { acked = 0, uncertain = 0, applied = 0, not_applied = 0, phantom = 0, wrong = 0, epochs = {} }
end

-- Re-reads until it succeeds (bounded): returns the value read through read_fn, or nil.
local function reread(S, backend, read_fn)
  local deadline = coord.now() + 60
  while coord.now() < deadline do
    local v, ver, err = read_fn()
    if v then return v, ver end
    note(S, backend, "counter re-read", err)
    coord.sleep(0.2)
  end
  return nil
end

local function etcd_counter(S)
  local K, key = S.ectr, "soak/ctr"
  local function read_ctr()
    local kv, err = S.etcd:get(key)
    if kv then return tonumber(kv.value), kv.mod_revision end
    if not err then return 0, 0 end
    return nil, nil, err
  end
  while S.running do
    local n, ver = reread(S, "etcd", read_ctr)
    if not n then break end
    local res, err = S.etcd:txn {
      compare = { { key = key, mod_revision = ver } },
      success = { { put = key, value = tostring(n + 1) } },
    }
    if res and res.succeeded then
      K.acked = K.acked + 1
    elseif res then
      K.phantom = K.phantom + 1 -- one writer: someone applied a write we were not told of
    else
      note(S, "etcd", "counter txn", err)
      if maybe_applied(err) then
        K.uncertain = K.uncertain + 1
        local _, v2 = reread(S, "etcd", read_ctr)
        if v2 and v2 ~= ver then K.applied = K.applied + 1 else K.not_applied = K.not_applied + 1 end
      end
    end
    pace(S, 0.05)
  end
end

local function etcd_counter_check(S)
  local K = S.ectr
  local kv = S.etcd:get("soak/ctr")
  K.final = kv and tonumber(kv.value) or 0
  K.wrong = math.abs(K.final - (K.acked + K.applied))
end

local function consul_read_ctr(S)
  local e, err = S.consul.kv:get("soak/ctr")
  if e then return tonumber(e.value), e.modify_index end
  if not err then return 0, 0 end
  return nil, nil, err
end

local function consul_counter(S)
  local K = S.cctr
  while S.running do
    do
      local permit <close> = S.gate:acquire()
      if not S.running then break end
      local n, ver, rerr = consul_read_ctr(S)
      if n then
        local ok, err = S.ctr_consul.kv:put("soak/ctr", tostring(n + 1), { cas = ver })
        local ep = K.epochs[S.consul_epoch] or { acked = 0, applied = 0 }
        K.epochs[S.consul_epoch] = ep
        if ok then
          K.acked, ep.acked = K.acked + 1, ep.acked + 1
        elseif ok == false then
          K.phantom = K.phantom + 1
        else
          note(S, "consul", "counter put", err)
          if maybe_applied(err) then
            K.uncertain = K.uncertain + 1
            local _, v2 = reread(S, "consul", function() return consul_read_ctr(S) end)
            if v2 and v2 ~= ver then K.applied, ep.applied = K.applied + 1, ep.applied + 1
            else K.not_applied = K.not_applied + 1 end
          end
        end
      else
        note(S, "consul", "counter read", rerr)
      end
    end
    pace(S, 0.05)
  end
end

-- With the writers stopped: the counter of this epoch against its acknowledged increments.
local function consul_counter_check(S)
  local K = S.cctr
  local ep = K.epochs[S.consul_epoch] or { acked = 0, applied = 0 }
  local n
  for _ = 1, 20 do
    n = consul_read_ctr(S)
    if n then break end
    coord.sleep(0.25)
  end
  if not n then
    K.wrong = K.wrong + 1
  else
    K.wrong = K.wrong + math.abs(n - (ep.acked + ep.applied))
    K.final = n
  end
end

---------------------------------------------------------------------------------------------
-- locks, semaphores and elections changing hands

local function new_prim(name, limit)
  return { name = name, limit = limit, holders = {}, taken = 0, overlap = 0, lost = 0, errors = 0, raised = 0,
    last = coord.now(), max_gap = 0 }
end

-- Records a holder; counts an overlap when more than `limit` holders of one epoch hold at once.
local function hold(P, epoch)
  local h = { epoch = epoch }
  local n = 0
  for x in pairs(P.holders) do
    if x.epoch == epoch and not x.lost then n = n + 1 end
  end
  if n >= P.limit then P.overlap = P.overlap + 1 end
  P.holders[h] = true
  P.taken = P.taken + 1
  local t = coord.now()
  if t - P.last > P.max_gap then P.max_gap = t - P.last end
  P.last = t
  return h
end

-- One round of a contender: acquire, hold a little, release.
local function contend(S, P, backend, i, acquire, release)
  local epoch = backend == "consul" and S.consul_epoch or 0
  local h, handle, err
  local function on_lost(e)
    if h then h.lost = true end
    P.lost = P.lost + 1
    note(S, backend, P.name .. " lost", e)
  end
  -- every other contender bounds its wait from outside, often shorter than the wait for a
  -- hand-over: that cancels the waiting call (which must give back its session or lease)
  if i % 2 == 0 then
    handle, err = coord.timeout(0.2 + math.random() * 0.6, acquire, on_lost)
  else
    handle, err = acquire(on_lost, 3)
  end
  if handle then
    if backend == "consul" and S.consul_epoch ~= epoch then epoch = -1 end
    h = hold(P, epoch)
    coord.sleep(0.1 + math.random() * 0.3)
    P.holders[h] = nil
    local ok, rerr = release(handle)
    if not ok then note(S, backend, P.name .. " release", rerr) end
  else
    if err and err.kind ~= "timeout" then
      P.errors = P.errors + 1
      note(S, backend, P.name, err)
    end
    pace(S, 0.2)
  end
end

-- Contends until the run stops. An error the API raises (it should return nil, err at run
-- time) is counted and logged, and the contender goes on with a fresh handle (new_handles).
local function contender(S, P, backend, i, acquire, release, new_handles)
  while S.running do
    local ok, e = pcall(contend, S, P, backend, i, acquire, release)
    if not ok then
      P.raised = P.raised + 1
      S.log(("%s contender %d: raised: %s"):format(P.name, i, tostring(e)))
      if new_handles then acquire, release = new_handles() end
      pace(S, 0.2)
    end
  end
end

local function spawn_prim(S, ...)
  local t = coord.spawn(...)
  S.prim_tasks[#S.prim_tasks + 1] = t
  return t
end

local function start_primitives(S)
  S.prims = {
    elock = new_prim("etcd lock", 1), eelect = new_prim("etcd election", 1),
    clock = new_prim("consul lock", 1), csem = new_prim("consul semaphore", 2), celect = new_prim("consul election", 1),
  }
  local P = S.prims
  for i = 1, 3 do
    spawn_prim(S, contender, S, P.elock, "etcd", i, function(on_lost, t)
      return S.etcd:lock("soak/lock", { ttl = 10, timeout = t, on_lost = on_lost })
    end, function(l) return S.etcd:unlock(l) end)
    spawn_prim(S, contender, S, P.eelect, "etcd", i, function(on_lost, t)
      return S.etcd:campaign("soak/elect", "c" .. i, { ttl = 10, timeout = t, on_lost = on_lost })
    end, function(l) return S.etcd:resign(l) end)
    spawn_prim(S, contender, S, P.clock, "consul", i, function(on_lost, t)
      return S.consul:lock("soak/clock/.lock", { ttl = 10, lock_delay = 0, timeout = t, on_lost = on_lost })
    end, function(l) return l:unlock() end)
    local function election()
      local el = S.consul:election("soak/celect", { ttl = 10, lock_delay = 0 })
      return function(on_lost, t) return el:campaign("c" .. i, { timeout = t, on_lost = on_lost }) end,
        function() return el:resign() end
    end
    local acquire, release = election()
    spawn_prim(S, contender, S, P.celect, "consul", i, acquire, release, election)
  end
  for i = 1, 4 do
    spawn_prim(S, contender, S, P.csem, "consul", i, function(on_lost, t)
      return S.consul:semaphore("soak/csem", 2, { ttl = 10, lock_delay = 0, on_lost = on_lost }):acquire { timeout = t }
    end, function(s) return s:release() end)
  end
end

---------------------------------------------------------------------------------------------
-- lease keepers and self-renewing sessions

local function start_leases(S, n)
  S.leases = { ids = {}, keepers = {}, lost = 0 }
  local L = S.leases
  for i = 1, n do
    local lease = assert(S.etcd:grant(10))
    L.ids[i] = lease.id
    assert(S.etcd:put("soak/lease/" .. i, "held", { lease = lease.id }))
    L.keepers[i] = S.etcd:keepalive(lease.id, { ttl = lease.ttl, on_lost = function(err)
      L.lost = L.lost + 1
      note(S, "etcd", "lease lost", err)
    end })
  end
end

local function start_sessions(S, n)
  S.sess = { open = {}, lost_same_epoch = 0, lost_restart = 0, opened = 0 }
  local X = S.sess
  for i = 1, n do
    spawn_prim(S, function()
      while S.running do
        local epoch = S.consul_epoch
        local s, err = S.consul.session:open { name = "soak-" .. i, ttl = 10 }
        if s then
          X.opened = X.opened + 1
          X.open[i] = s
          local _, lost = s:wait_lost()
          X.open[i] = nil
          if lost then
            if S.consul_epoch == epoch then X.lost_same_epoch = X.lost_same_epoch + 1
            else X.lost_restart = X.lost_restart + 1 end
            s:close()
          end
        else
          note(S, "consul", "session open", err)
          pace(S, 0.5)
        end
      end
    end)
  end
end

---------------------------------------------------------------------------------------------
-- probes and samplers

local function probe(S)
  while S.probing do
    local _, err = S.etcd:get("soak/probe")
    if err then note(S, "etcd", "probe", err) end
    local e, cerr = S.consul.kv:get("soak/probe")
    if not e and coord.is_error(cerr) then note(S, "consul", "probe", cerr) end
    coord.sleep(1)
  end
end

local function count_conns(S)
  local by_port, e, c = connections(), 0, 0
  for _, m in ipairs(S.etcd_server.members) do e = e + (by_port[m.port] or 0) end
  c = by_port[S.consul_server.port] or 0
  return e, c
end

local function sampler(S)
  while S.sampling do
    S.rss[#S.rss + 1] = { t = coord.now(), kb = rss_kb() }
    local e, c = count_conns(S)
    if e > S.conns.etcd then S.conns.etcd = e end
    if c > S.conns.consul then S.conns.consul = c end
    coord.sleep(2)
  end
end

---------------------------------------------------------------------------------------------
-- chaos

-- The fault a real server cannot produce: the Consul counter's writes go through the fault
-- peer (a proxy to the agent, S.ctr_consul), which is told to forward the next one, let
-- Consul apply it, and close the connection without the reply. The counter must then get a
-- `maybe_applied` error (never a `false` from a silent second send) and resolve it by
-- reading the counter back.
function M.drop_after_apply(S)
  S.peer.arm(CTR_PATH, 1)
  S.log(("chaos %6.1f s: the peer drops the next counter reply after Consul applied it"):format(coord.now() - S.t0))
  return true
end

local function etcd_kill(S, i, kind)
  local t0 = coord.now()
  local w = { t0 }
  table.insert(S.windows.etcd, w)
  S.etcd_server:kill(i)
  S.chaos[kind] = S.chaos[kind] + 1
  S.log(("chaos %6.1f s: killed etcd %s member m%d"):format(t0 - S.t0, kind, i))
  coord.sleep(DOWN_FOR)
  S.etcd_server:restart(i)
  wait_for("etcd leader", function() return S.etcd_server:leader() ~= nil end, 60)
  w[2] = coord.now() + GRACE
end

local function consul_restart(S)
  -- stop the Consul writers, check the epoch that ends, then take the agent away
  local permits = {}
  for k = 1, CONSUL_WRITERS do permits[k] = S.gate:acquire() end
  consul_epoch_check(S)
  consul_counter_check(S)
  local w = { coord.now() }
  table.insert(S.windows.consul, w)
  S.consul_epoch = S.consul_epoch + 1
  S.consul_server:down()
  local t_down = coord.now()
  S.chaos.consul = S.chaos.consul + 1
  S.log(("chaos %6.1f s: Consul agent down (epoch %d begins)"):format(t_down - S.t0, S.consul_epoch))
  local reported = false
  while coord.now() < t_down + DOWN_FOR do
    local st = S.cmirror:status()
    if not reported and st.synced == false then
      reported = math.max(0, (st.stale_since or coord.now()) - t_down)
    end
    coord.sleep(0.1)
  end
  S.stale[#S.stale + 1] = reported
  S.consul_server:up()
  consul_new_epoch(S)
  w[2] = coord.now() + GRACE
  for _, p in ipairs(permits) do p:release() end
end

local function chaos(S, plan, warm, interval)
  pace(S, warm)
  local k = 0
  while S.running and coord.now() + interval / 2 < S.t_end do
    k = k + 1
    local action = plan[(k - 1) % #plan + 1]
    local started = coord.now()
    if action == "leader" then
      local i
      wait_for("etcd leader", function() i = S.etcd_server:leader() return i ~= nil end, 30)
      if i then etcd_kill(S, i, "leader") end
    elseif action == "stream" then
      local url
      wait_for("watch stream connected", function() url = watch_mod.stats(S.etcd).connected return url ~= nil end, 30)
      local i = url and S.etcd_server:member_at(url)
      if i then etcd_kill(S, i, "stream") end
    elseif action == "consul" then
      consul_restart(S)
    elseif action == "peer" then
      if M.drop_after_apply(S) then S.chaos.peer = S.chaos.peer + 1 end
    end
    pace(S, math.max(0, interval - (coord.now() - started)))
  end
end

---------------------------------------------------------------------------------------------
-- the run

local function row(rows, name, value, bound, ok)
  rows[#rows + 1] = { name = name, value = value, bound = bound, ok = ok and true or false }
end

local function count_unavailable(S)
  local n, all = 0, 0
  for _, e in ipairs(S.errors.etcd) do
    if e.kind == "unavailable" then
      all = all + 1
      if not in_chaos(S, "etcd", e.t) then n = n + 1 end
    end
  end
  return n, all
end

local function errors_outside(S, backend)
  local n, all = 0, 0
  for _, e in ipairs(S.errors[backend]) do
    all = all + 1
    if not in_chaos(S, backend, e.t) then n = n + 1 end
  end
  return n, all
end

-- "kind=count ..." of a list of noted errors
local function kinds(list)
  local n, names = {}, {}
  for _, e in ipairs(list) do
    if not n[e.kind] then names[#names + 1] = e.kind end
    n[e.kind] = (n[e.kind] or 0) + 1
  end
  table.sort(names)
  for i, k in ipairs(names) do names[i] = k .. "=" .. n[k] end
  return #names > 0 and table.concat(names, " ") or "none"
end

-- Stops a list of tasks: waits (bounded) for them to end by themselves, then cancels the rest.
local function stop_tasks(tasks, limit)
  local deadline = coord.now() + limit
  for _, t in ipairs(tasks) do
    local left = deadline - coord.now()
    if left > 0 then coord.timeout(left, t.join, t) end
    if t:status() == "waiting" or t:status() == "running" then t:cancel() end
  end
end

--- Runs the soak for opts.seconds (default 120) of load. opts: seconds, log (function(line)
--- for progress), etcd_watches (1000), consul_watches (300). Returns the list of rows
--- {name, value, bound, ok} and whether every row is ok. Must run inside coord.run.
function M.run(opts)
  opts = opts or {}
  local S = new_state { seconds = opts.seconds or 120, log = opts.log }
  S.log("starting servers")
  S.etcd_server = servers.etcd { version = "3.5", members = 3 }
  S.consul_server = servers.consul()
  S.consul_server:wait_node()
  S.peer = helpers.start_peer { upstream = S.consul_server.port }
  local ok_all, rows = xpcall(function()
    assert(S.peer.count(CTR_PATH) == 0, "fault peer does not answer")
    S.etcd = etcd_mod.new { endpoints = S.etcd_server.endpoints, timeout = 10 }
    -- every endpoint the client (or its watch stream) marks as failing, with the time
    local failed = S.etcd._failed
    S.marked = {}
    S.etcd._failed = function(c, url, err)
      S.marked[#S.marked + 1] = { t = coord.now(), url = url, err = err }
      return failed(c, url, err)
    end
    S.consul = consul_mod.new { address = S.consul_server.address, timeout = 10 }
    S.ctr_consul = consul_mod.new { address = S.peer.url(""), timeout = 10 }
    S.gate = coord.semaphore(CONSUL_WRITERS)
    S.ectr, S.cctr = new_counter(), new_counter()

    S.emirror = coord.mirror(S.etcd, W_PREFIX, { max_backoff = 2 })
    S.cmirror = coord.mirror(S.consul, C_PREFIX, { max_backoff = 2 })
    S.log("creating watches")
    etcd_watches(S, opts.etcd_watches or 1000)
    consul_watches(S, opts.consul_watches or 300)
    assert(S.emirror:wait(function(m) return m:status().synced end, 30))
    assert(S.cmirror:wait(function(m) return m:status().synced end, 30))
    -- the CPU of the watches alone, before anything else runs
    S.log(("idle watches for %d s"):format(IDLE_CPU_FOR))
    local cpu_w0, t_w0 = cpu_seconds(), coord.now()
    coord.sleep(IDLE_CPU_FOR)
    local cpu_watches = (cpu_seconds() - cpu_w0) / (coord.now() - t_w0)
    start_leases(S, 4)
    start_sessions(S, 3)
    start_primitives(S)

    S.t0 = coord.now()
    S.t_end = S.t0 + S.seconds
    S.probing, S.sampling = true, true
    local probe_task = coord.spawn(probe, S)
    local sampler_task = coord.spawn(sampler, S)
    local workers = {}
    for w = 1, 4 do workers[#workers + 1] = coord.spawn(etcd_writer, S, w, 4) end
    for w = 1, 2 do workers[#workers + 1] = coord.spawn(consul_writer, S, w, 2) end
    workers[#workers + 1] = coord.spawn(etcd_counter, S)
    workers[#workers + 1] = coord.spawn(consul_counter, S)
    local warm = math.min(8, S.seconds / 10)
    local interval = math.max(8, math.min(24, (S.seconds - warm - 15) / 4))
    local chaos_task = coord.spawn(chaos, S, { "leader", "stream", "consul", "leader", "peer" }, warm, interval)
    S.log(("load for %d s, chaos every %.0f s"):format(S.seconds, interval))

    local warm_rss_at = S.t0 + math.max(30, S.seconds / 4)
    while coord.now() < S.t_end do coord.sleep(math.min(1, S.t_end - coord.now())) end
    local t_load_end = coord.now()
    -- the end: chaos first (the servers must be back), then the writers
    S.running = false
    S.log("load over; stopping chaos and writers")
    stop_tasks({ chaos_task }, 180)
    stop_tasks(workers, 60)
    local rss_warm, rss_peak = nil, 0
    for _, s in ipairs(S.rss) do
      if s.t >= warm_rss_at and not rss_warm then rss_warm = s.kb end
      if s.t >= warm_rss_at and s.t <= t_load_end and s.kb > rss_peak then rss_peak = s.kb end
    end
    local rss_last = S.rss[#S.rss].kb

    -- events and counters
    S.log("checking events and counters")
    local ev = etcd_watch_check(S)
    consul_epoch_check(S)
    consul_order_check(S)
    consul_counter_check(S)
    etcd_counter_check(S)

    -- mirrors against the servers
    local function mirror_diff(m, list)
      local want = {}
      for _, kv in ipairs(list) do want[kv.key] = kv.value end
      local function diff()
        local n = 0
        for k, v in pairs(want) do if m:get(k) ~= v then n = n + 1 end end
        for k in m:pairs() do if want[k] == nil then n = n + 1 end end
        return n
      end
      wait_for("mirror", function() return diff() == 0 end, CATCH_UP)
      return diff()
    end
    local ekvs = assert(S.etcd:range(W_PREFIX, { prefix = true }))
    local ckvs = assert(S.consul.kv:list(C_PREFIX))
    local emirror_diff = mirror_diff(S.emirror, ekvs)
    local cmirror_diff = mirror_diff(S.cmirror, ckvs)

    -- holders released, then what is left on the servers
    S.log("stopping locks, sessions and leases")
    local alive = 0
    for _, id in ipairs(S.leases.ids) do
      local info = S.etcd:time_to_live(id)
      if info and info.ttl > 0 then alive = alive + 1 end
    end
    for _, s in pairs(S.sess.open) do s:close() end
    stop_tasks(S.prim_tasks, 30)
    for _, k in ipairs(S.leases.keepers) do k:stop() end
    for _, id in ipairs(S.leases.ids) do S.etcd:revoke(id) end
    local held = 0
    local left_sessions, left_leases
    wait_for("sessions and leases released", function()
      local list = S.consul.session:list()
      local ids = S.etcd:leases()
      left_sessions, left_leases = list and #list or -1, ids and #ids or -1
      return left_sessions == held and left_leases == held
    end, 20)

    -- idle: only the watches and the mirrors are open
    S.log(("idle for %d s"):format(IDLE_FOR))
    S.sampling = false
    stop_tasks({ sampler_task }, 5)
    local streams0 = watch_mod.stats(S.etcd).streams
    local unavailable_before = count_unavailable(S)
    local cpu0, t_idle0 = cpu_seconds(), coord.now()
    coord.sleep(IDLE_FOR)
    local cpu_idle = (cpu_seconds() - cpu0) / (coord.now() - t_idle0)
    local idle_reconnects = watch_mod.stats(S.etcd).streams - streams0
    local idle_unavailable = count_unavailable(S) - unavailable_before
    local econn_end, cconn_end = count_conns(S)
    S.probing = false
    stop_tasks({ probe_task }, 5)

    local n_watches = #S.ew.keys + #S.cw.keys
    local unavailable, unavailable_all = count_unavailable(S)
    local cerr_out, cerr_all = errors_outside(S, "consul")
    local marked_out = 0
    for _, m in ipairs(S.marked) do
      if not in_chaos(S, "etcd", m.t) then
        marked_out = marked_out + 1
        S.log(("endpoint %s marked failing at %.1f s while healthy: %s"):format(m.url, m.t - S.t0, tostring(m.err)))
      end
    end
    local stale_max, stale_never = 0, 0
    for _, d in ipairs(S.stale) do
      if d == false then stale_never = stale_never + 1 elseif d > stale_max then stale_max = d end
    end

    for _, backend in ipairs { "etcd", "consul" } do -- the distinct errors, for the log
      local seen, n = {}, 0
      for _, e in ipairs(S.errors[backend]) do
        local line = e.what .. ": " .. e.text:gsub("%d+", "N")
        if not seen[line] and n < 12 then
          seen[line], n = true, n + 1
          S.log(("%s error at %.1f s%s: %s: %s"):format(backend, e.t - S.t0,
            in_chaos(S, backend, e.t) and " (chaos)" or "", e.what, e.text))
        end
      end
    end

    local R = {}
    local P = S.prims
    -- what a run of 120 s or more must include (shorter runs: whatever fits)
    local need = S.seconds >= 120 and { leader = 2, stream = 1, consul = 1 } or { leader = 0, stream = 0, consul = 0 }
    row(R, "chaos: etcd leader kills", S.chaos.leader, ">= " .. need.leader, S.chaos.leader >= need.leader)
    row(R, "chaos: watch-stream member kills", S.chaos.stream, ">= " .. need.stream, S.chaos.stream >= need.stream)
    row(R, "chaos: Consul agent restarts", S.chaos.consul, ">= " .. need.consul, S.chaos.consul >= need.consul)
    row(R, "chaos: peer drops a counter reply after the write applied", S.chaos.peer, ">= 1", S.chaos.peer >= 1)
    row(R, "consul counter replies dropped, seen as uncertain", S.cctr.uncertain, ">= drops",
      S.cctr.uncertain >= S.chaos.peer)
    row(R, "etcd events: acknowledged writes", ev.acked, "> 0", ev.acked > 0)
    row(R, "etcd events: uncertain writes", ev.uncertain, "info", true)
    row(R, "etcd events: watches caught up", ev.caught and "yes" or "no", "yes", ev.caught)
    row(R, "etcd events: lost", ev.lost, 0, ev.lost == 0)
    row(R, "etcd events: duplicated (same revision)", ev.dup, 0, ev.dup == 0)
    row(R, "etcd events: out of order", ev.order, 0, ev.order == 0)
    row(R, "etcd writes: applied twice (one value, two revisions)", ev.twice, 0, ev.twice == 0)
    row(R, "etcd writes: applied though reported not sent", ev.phantom, 0, ev.phantom == 0)
    row(R, "etcd watches failed", S.ew.failed, 0, S.ew.failed == 0)
    row(R, "etcd watch streams opened (1 + reconnects)", watch_mod.stats(S.etcd).streams, "info", true)
    row(R, "consul watch: final value wrong (keys, all epochs)", S.cw.final_wrong, 0, S.cw.final_wrong == 0)
    row(R, "consul watch: values out of order / stale", S.cw.order, 0, S.cw.order == 0)
    row(R, "consul watch: values duplicated", S.cw.dup, 0, S.cw.dup == 0)
    local E, C = S.ectr, S.cctr
    row(R, "etcd counter: acked + applied-uncertain vs value", ("%d + %d vs %s"):format(E.acked, E.applied, tostring(E.final)),
      "equal", E.wrong == 0 and E.acked > 0)
    row(R, "etcd counter: uncertain (applied / not)", ("%d (%d / %d)"):format(E.uncertain, E.applied, E.not_applied), "info", true)
    row(R, "etcd counter: CAS refused with one writer", E.phantom, 0, E.phantom == 0)
    row(R, "consul counter: off by (all epochs)", C.wrong, 0, C.wrong == 0 and C.acked > 0)
    row(R, "consul counter: acked, uncertain (applied / not)", ("%d, %d (%d / %d)"):format(C.acked, C.uncertain, C.applied, C.not_applied), "info", true)
    row(R, "consul counter: CAS refused with one writer", C.phantom, 0, C.phantom == 0)
    for _, k in ipairs { "elock", "eelect", "clock", "csem", "celect" } do
      local p = P[k]
      local gap = math.max(p.max_gap, t_load_end - p.last)
      row(R, p.name .. ": acquisitions", p.taken, ">= 5", p.taken >= 5)
      row(R, p.name .. ": longest time without a new holder (s)", ("%.1f"):format(gap), "<= " .. HANDOVER_BOUND,
        gap <= HANDOVER_BOUND)
      row(R, p.name .. ": more than " .. p.limit .. " holder(s) at once", p.overlap, 0, p.overlap == 0)
      row(R, p.name .. ": errors raised (not returned)", p.raised, 0, p.raised == 0)
    end
    row(R, "etcd locks/elections lost while held", P.elock.lost + P.eelect.lost, 0, P.elock.lost + P.eelect.lost == 0)
    row(R, "etcd lease keepers lost", S.leases.lost, 0, S.leases.lost == 0)
    row(R, "etcd leases alive at the end", alive .. "/" .. #S.leases.ids, "all", alive == #S.leases.ids)
    row(R, "consul sessions lost with the agent up", S.sess.lost_same_epoch, 0, S.sess.lost_same_epoch == 0)
    row(R, "consul sessions lost to a restart", S.sess.lost_restart, "info", true)
    row(R, "consul sessions left after release", left_sessions, held, left_sessions == held)
    row(R, "etcd leases left after release", left_leases, held, left_leases == held)
    row(R, "etcd unavailable errors while healthy", unavailable .. " (of " .. unavailable_all .. ")", 0, unavailable == 0)
    row(R, "etcd unavailable errors while idle", idle_unavailable, 0, idle_unavailable == 0)
    row(R, "etcd watch stream reconnects while idle", idle_reconnects, 0, idle_reconnects == 0)
    row(R, "etcd endpoints marked failing while healthy", marked_out .. " (of " .. #S.marked .. ")", 0, marked_out == 0)
    row(R, "consul errors with the agent up", cerr_out .. " (of " .. cerr_all .. ")", "info", true)
    row(R, "etcd errors by kind", kinds(S.errors.etcd), "info", true)
    row(R, "consul errors by kind", kinds(S.errors.consul), "info", true)
    row(R, "mirror etcd: keys differing at the end", emirror_diff, 0, emirror_diff == 0)
    row(R, "mirror consul: keys differing at the end", cmirror_diff, 0, cmirror_diff == 0)
    row(R, "mirror consul: outages not reported as stale", stale_never .. "/" .. #S.stale, 0, stale_never == 0)
    row(R, "mirror consul: seconds until an outage is reported", stale_never > 0 and "never" or ("%.2f"):format(stale_max),
      "<= " .. STALE_BOUND, stale_never == 0 and stale_max <= STALE_BOUND)
    row(R, "connections to etcd (most at once)", S.conns.etcd, "<= " .. MAX_CONNS.etcd, S.conns.etcd <= MAX_CONNS.etcd)
    row(R, "connections to consul (most at once)", S.conns.consul, "<= " .. MAX_CONNS.consul, S.conns.consul <= MAX_CONNS.consul)
    row(R, "connections at the end of idle (etcd, consul)", econn_end .. ", " .. cconn_end, "<= most at once",
      econn_end <= S.conns.etcd and cconn_end <= S.conns.consul)
    local growth = rss_warm and (rss_peak - rss_warm) / 1024 or 0
    row(R, "RSS MB warm / peak / end", rss_warm and ("%.1f / %.1f / %.1f"):format(rss_warm / 1024, rss_peak / 1024, rss_last / 1024)
      or ("run shorter than warm-up; end %.1f"):format(rss_last / 1024), "info", true)
    row(R, "RSS growth after warm-up MB", ("%.1f"):format(growth), "<= 16", growth <= 16)
    local per_watch = cpu_watches / n_watches * 1e6
    row(R, "CPU per idle watch, before the load (us per s)", ("%.2f"):format(per_watch), "<= 10", per_watch <= 10)
    row(R, "CPU while idle after the load (% of a core)", ("%.2f"):format(cpu_idle * 100), "info", true)

    -- close everything
    S.emirror:close()
    S.cmirror:close()
    for _, w in ipairs(S.ew.watches) do w:close() end
    for _, w in ipairs(S.cw.watches) do w:close() end
    stop_tasks(S.tasks, 30)
    return R
  end, debug.traceback)
  if not ok_all then -- stop what is left, so that nothing runs on in the caller's loop
    S.running, S.probing, S.sampling = false, false, false
    if S.emirror then S.emirror:close() end
    if S.cmirror then S.cmirror:close() end
    for _, w in ipairs(S.ew and S.ew.watches or {}) do w:close() end
    for _, w in ipairs(S.cw and S.cw.watches or {}) do w:close() end
    for _, t in ipairs(S.prim_tasks) do t:cancel() end
  end
  S.peer.stop()
  S.consul_server:stop()
  S.etcd_server:stop()
  if not ok_all then error(rows, 0) end
  local ok = true
  for _, r in ipairs(rows) do ok = ok and r.ok end
  return rows, ok
end

--- The rows as a text table.
function M.format(rows)
  local out = { ("%-62s %-26s %-12s %s"):format("invariant", "value", "bound", "ok") }
  for _, r in ipairs(rows) do
    out[#out + 1] = ("%-62s %-26s %-12s %s"):format(r.name, tostring(r.value), tostring(r.bound), r.ok and "ok" or "FAIL")
  end
  return table.concat(out, "\n")
end

return M
