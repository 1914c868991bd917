-- spec/etcd_cluster_spec.lua: coord.etcd over TLS with client certificates, with auth (token
-- expiry), and against several endpoints: a three-member cluster losing a member, and
-- endpoints that fail on purpose (the fault-injecting peer) to pin down what is retried.

local coord = require "coord"
local http = require "coord.http"
local servers = require "servers"
local helpers = require "helpers"
local etcd_mod = require "etcd_client" -- coord.etcd with the run's transport

-- Runs a test body as a coroutine (see etcd_lease_spec.lua).
local function co(fn)
  return function() return coord.run(fn) end
end

-- Established TCP connections to a local port.
local function connections(port)
  local _, out = servers.sh("ss -Htn state established " .. servers.sh_quote("( dport = :" .. port .. " )"))
  local n = 0
  for _ in out:gmatch("[^\n]+") do n = n + 1 end
  return n
end

for _, version in ipairs { "3.4", "3.5" } do
  describe("coord.etcd over TLS with client certificates on etcd " .. version, function()
    local server

    setup(function()
      server = servers.etcd { version = version, tls = true }
    end)

    teardown(function()
      if server then server:stop() end
    end)

    it("reads and writes over mutual TLS, sharing one HTTP/2 connection", co(function()
      local port = server.members[1].port
      local before = connections(port) -- the harness's own health checks may have left one
      local etcd = etcd_mod.new { endpoints = { server.endpoint }, tls = server:client_tls() }
      local t = assert(etcd:_target())
      assert.equal("2tls", t.http_version)
      assert(etcd:put("tls/a", "secure"))
      assert.equal("secure", etcd:get("tls/a").value)
      local fns = {}
      for i = 1, 20 do fns[i] = function() return assert(etcd:get("tls/a")).value end end
      local res = { coord.gather(table.unpack(fns)) }
      for i = 1, 20 do assert.equal("secure", res[i][1]) end
      assert.is_true(connections(port) - before <= 1)
      local ok, out = server:ctl("get --print-value-only tls/a")
      assert.is_true(ok, out)
      assert.equal("secure\n", out)
    end))

    it("fails without a client certificate or with the wrong CA", co(function()
      local c = server:client_tls()
      local nocert = etcd_mod.new { endpoints = { server.endpoint }, tls = { ca_file = c.ca_file } }
      local kv, err = nocert:get("tls/a")
      assert.is_nil(kv)
      assert.is_truthy(err.kind == "tls" or err.kind == "closed" or err.kind == "protocol", tostring(err))
      local untrusted = etcd_mod.new { endpoints = { server.endpoint } }
      kv, err = untrusted:get("tls/a")
      assert.is_nil(kv)
      assert.equal("tls", err.kind)
    end))

    -- the certificate names 127.0.0.1 and localhost: connecting to 127.0.0.1 while checking
    -- it as "localhost" works, as another name it fails, for calls and the watch stream
    it("checks the server's certificate against tls.server_name", co(function()
      local function client(name)
        local tls = server:client_tls()
        tls.server_name = name
        return etcd_mod.new { endpoints = { server.endpoint }, tls = tls, timeout = 10 }
      end
      local good = client("localhost")
      assert(good:put("sni/a", "1"))
      assert.equal("1", assert(good:get("sni/a")).value)
      local t = assert(good:_target())
      assert.equal("https://localhost:" .. server.members[1].port, t.url)
      assert.equal(server.endpoint, t.endpoint)
      local w <close> = good:watch("sni/a", { start_revision = 1 })
      assert.equal("1", assert(w:next()).kv.value)
      local kv, err = client("other.example"):get("sni/a")
      assert.is_nil(kv)
      assert.equal("tls", err.kind)
      assert.has_error(function() client("bad:name") end,
        "bad option 'tls.server_name' to 'new' (a host name expected)")
    end))
  end)
end

describe("coord.http connect_to", function()
  it("checks the shape of each entry before sending anything", function()
    local function req(list)
      return function() http.request { url = "http://127.0.0.1:1/", connect_to = list } end
    end
    assert.has_error(req { "a:1:b" }, 'bad request option \'connect_to\' ("HOST:PORT:CONNECT-TO-HOST:CONNECT-TO-PORT" expected at index 1)')
    assert.has_error(req { "a:1:b:2", "a:1:b:2\r\nX: y" }, "bad request option 'connect_to' (forbidden character at index 2)")
    assert.has_error(req { "a:1: b:2" }, "bad request option 'connect_to' (forbidden character at index 1)")
    assert.has_error(req { 7 }, "bad request option 'connect_to' (string expected at index 1, got number)")
    assert.has_error(req "a:1:b:2", "bad request option 'connect_to' (table expected, got string)")
  end)

  it("sends the request for one host to another address", co(function()
    -- nothing listens on port: without connect_to the name does not resolve, with it the
    -- connection to 127.0.0.1 is refused
    local port = servers.free_port()
    local _, rerr = http.request { url = "http://nowhere.invalid:" .. port .. "/" }
    assert.equal("resolve", rerr.kind)
    local res, err = http.request { url = "http://nowhere.invalid:" .. port .. "/",
      connect_to = { "nowhere.invalid:" .. port .. ":127.0.0.1:" .. port, "[::1]:80:[::1]:81" } }
    assert.is_nil(res)
    assert.equal("connect", err.kind)
  end))
end)

describe("coord.etcd with auth", function()
  local server

  setup(function()
    server = servers.etcd { version = "3.5", auth = true, auth_token_ttl = 2 }
    assert(server:ctl("user add reader --new-user-password=readerpw"))
    assert(server:ctl("role add read-only"))
    assert(server:ctl("role grant-permission read-only read a/ --prefix"))
    assert(server:ctl("user grant-role reader read-only"))
  end)

  teardown(function()
    if server then server:stop() end
  end)

  local function client(user, password)
    return etcd_mod.new { endpoints = { server.endpoint }, user = user, password = password }
  end

  it("refreshes its endpoints from the member list with auth (authenticating first)", co(function()
    local etcd = etcd_mod.new { endpoints = { server.endpoint }, user = "root", password = "rootpw",
      auto_sync = 3600, timeout = 10 }
    assert(etcd:put("a/sync", "1"))
    assert.equal("1", assert(etcd:get("a/sync")).value)
    assert.same({ server.endpoint }, assert(etcd:sync()))
  end))

  it("authenticates once for many concurrent first calls", co(function()
    local etcd = client("root", "rootpw")
    -- the JSON calls go through coord.http's _exchange, the gRPC ones through request
    local real, real_exchange, n = http.request, http._exchange, 0
    local function count(o)
      -- the gateway's path, or the gRPC method (transport "grpc")
      if o.url:find("/v3/auth/authenticate", 1, true) or o.url:find("/etcdserverpb.Auth/Authenticate", 1, true) then
        n = n + 1
      end
    end
    http.request = function(o) count(o) return real(o) end
    http._exchange = function(o) count(o) return real_exchange(o) end
    local fns = {}
    for i = 1, 10 do fns[i] = function() return assert(etcd:put("a/" .. i, "v")) end end
    local ok, err = pcall(coord.gather, table.unpack(fns))
    http.request, http._exchange = real, real_exchange
    assert.is_true(ok, err)
    assert.equal(1, n)
    assert.is_string(etcd.token)
    local t = assert(etcd:_target())
    assert.equal(etcd.token, t.headers.Authorization)
    assert.equal(etcd.token, t.token)
  end))

  it("refreshes an expired token transparently, for reads and writes", co(function()
    local etcd = client("root", "rootpw")
    assert(etcd:put("a/x", "1"))
    local first = etcd.token
    coord.sleep(3) -- the token lives 2 s after its last use
    assert(etcd:put("a/x", "2"))
    assert.is_string(etcd.token)
    assert.not_equal(first, etcd.token)
    local second = etcd.token
    coord.sleep(3)
    assert.equal("2", etcd:get("a/x").value)
    assert.not_equal(second, etcd.token)
  end))

  it("reports bad credentials, a missing user and denied permissions without the token", co(function()
    local kv, err = client("root", "wrong"):get("a/x")
    assert.is_nil(kv)
    assert.equal("auth", err.kind)
    assert.not_matches("wrong", tostring(err))
    kv, err = etcd_mod.new({ endpoints = { server.endpoint } }):get("a/x")
    assert.is_nil(kv)
    assert.equal("auth", err.kind)
    local reader = client("reader", "readerpw")
    assert(reader:get("a/x"))
    local h
    h, err = reader:put("a/x", "3")
    assert.is_nil(h)
    assert.equal("permission", err.kind)
    assert.equal(403, err.status)
    assert.equal(7, err.code)
    assert.is_string(reader.token)
    assert.is_nil(tostring(err):find(reader.token, 1, true))
    kv, err = reader:get("b/x")
    assert.is_nil(kv)
    assert.equal("permission", err.kind)
  end))

  it("takes locks with auth", co(function()
    local etcd = client("root", "rootpw")
    local lock = assert(etcd:lock("a/lock"))
    assert(etcd:unlock(lock))
  end))
end)

describe("coord.etcd on a three-member cluster", function()
  local server

  setup(function()
    server = servers.etcd { version = "3.5", members = 3 }
  end)

  teardown(function()
    if server then server:stop() end
  end)

  it("lists members and reports each one's status, version and health", co(function()
    local etcd = etcd_mod.new { endpoints = server.endpoints }
    local members, _, h = assert(etcd:members())
    assert.equal(3, #members)
    local names = {}
    for _, m in ipairs(members) do
      names[#names + 1] = m.name
      assert.equal("integer", math.type(m.id))
      assert.equal(1, #m.client_urls)
      assert.is_false(m.is_learner)
    end
    table.sort(names)
    assert.same({ "m1", "m2", "m3" }, names)
    assert.equal("integer", math.type(h.cluster_id))
    local leaders = {}
    for _, url in ipairs(server.endpoints) do
      local st = assert(etcd:status(url))
      assert.equal("3.5.16", st.version)
      assert.is_true(st.db_size > 0)
      assert.is_true(st.raft_index > 0)
      assert.is_true(st.raft_term > 0)
      leaders[st.leader] = true
      assert.same({ server = "3.5.16", cluster = "3.5.0" }, assert(etcd:version(url)))
      assert.is_true(etcd:health(url))
    end
    assert.equal(1, #(function() local l = {} for k in pairs(leaders) do l[#l + 1] = k end return l end)())
    assert.equal("3.5.16", assert(etcd:status()).version)
  end))

  it("fails over to the next member when one is killed", co(function()
    local etcd = etcd_mod.new { endpoints = server.endpoints }
    assert(etcd:put("fo/a", "1"))
    assert.equal(server.endpoints[1], assert(etcd:_target()).url)
    server:kill(1)
    assert.equal("1", assert(etcd:get("fo/a")).value)
    assert.not_equal(server.endpoints[1], assert(etcd:_target()).url)
    -- a write to a refused connection never left, so it may go to the next member
    local only2 = etcd_mod.new { endpoints = { server.endpoints[1], server.endpoints[2] } }
    assert(only2:put("fo/b", "2"))
    assert.equal("2", assert(etcd:get("fo/b")).value)
    local h, err = etcd:health(server.endpoints[1])
    assert.is_nil(h)
    assert.equal("connect", err.kind)
    server:restart(1)
    assert.is_true(etcd:health(server.endpoints[1]))
  end))

  it("says at once that every endpoint is down instead of retrying in a storm", co(function()
    local dead = etcd_mod.new { endpoints = { "http://127.0.0.1:" .. servers.free_port(),
      "http://127.0.0.1:" .. servers.free_port() } }
    local kv, err = dead:get("x")
    assert.is_nil(kv)
    assert.equal("connect", err.kind)
    -- 100 calls at once: nearly all answered "unavailable" without touching the network.
    -- An endpoint whose backoff ran out meanwhile (a slow run, valgrind) is tried again,
    -- with a delay that doubles each time, so only a few calls may really connect.
    local tried, t0 = 0, coord.now()
    for _ = 1, 100 do
      kv, err = dead:get("x")
      assert.is_nil(kv)
      if err.kind == "connect" then tried = tried + 1 else assert.equal("unavailable", err.kind) end
    end
    local elapsed = coord.now() - t0
    assert.is_true(tried <= 2 * (2 + math.log(1 + elapsed / 0.05, 2)), tried .. " connects in " .. elapsed .. " s")
    local t, terr = dead:_target()
    assert.is_nil(t)
    assert.equal("unavailable", terr.kind)
    assert.matches("all etcd endpoints are failing; last error: ", terr.message, 1, true)
    assert.equal("connect", terr.cause.kind)
  end))

  -- hasleader: a member cut off from its leader refuses at once instead of holding a read
  -- until its timeout, or creating a watch that never delivers. The two others are stopped
  -- (SIGSTOP), so member 3 loses its leader.
  it("hears at once from a member without a leader, and does not apply a write there", co(function()
    local m3 = etcd_mod.new { endpoints = { server.endpoints[3] }, timeout = 30 }
    assert(m3:put("part/k", "before"))
    local lease = assert(m3:grant(60))
    local w <close> = m3:watch("part/k", { start_revision = 1 })
    assert.equal("before", assert(w:next()).kv.value)
    server.members[1].proc:pause()
    server.members[2].proc:pause()
    local resumed = false
    local function resume_others()
      if resumed then return end
      resumed = true
      server.members[1].proc:send("CONT")
      server.members[2].proc:send("CONT")
    end
    local _ <close> = setmetatable({}, { __close = resume_others })
    -- member 3 notices the missing leader after an election timeout or two
    local err
    servers.until_true("member 3 without a leader", function()
      local kv
      kv, err = coord.timeout(10, m3.get, m3, "part/k")
      return kv == nil and err.kind == "unavailable" and err.message:find("no leader", 1, true) ~= nil
    end, 30)
    -- a read, even a serializable one, and a write: answered at once, not after 30 s
    local kv, rerr = coord.timeout(10, m3.get, m3, "part/k", { serializable = true })
    assert.is_nil(kv)
    assert.equal("unavailable", rerr.kind)
    local h, perr = coord.timeout(10, m3.put, m3, "part/k", "during")
    assert.is_nil(h)
    assert.equal("unavailable", perr.kind)
    assert.matches("no leader", perr.message)
    -- a streaming call (lease keepalive) nests its refusal: it reads as the server's words
    local ttl, kerr = coord.timeout(10, m3.keepalive_once, m3, lease.id)
    assert.is_nil(ttl)
    assert.equal("unavailable", kerr.kind)
    assert.matches("no leader", kerr.message)
    assert.is_nil(kerr.message:find("{", 1, true), kerr.message)
    -- the watch stream is refused there too (not kept open silently), and so is a new watch;
    -- both wait for a member with a leader
    local w2 <close> = m3:watch("part/other")
    local stats = require("coord.etcd.watch").stats
    servers.until_true("watch stream refused for want of a leader", function()
      local st = stats(m3)
      return st.connected == nil and st.last_error and st.last_error.kind == "unavailable"
        and st.last_error.message:find("no leader", 1, true) ~= nil
    end, 30)
    resume_others()
    servers.until_true("member 3 with a leader again", function()
      local got = coord.timeout(10, m3.get, m3, "part/k")
      return got ~= nil
    end, 60)
    -- the write refused for want of a leader was not applied
    assert.equal("before", assert(m3:get("part/k")).value)
    assert(m3:put("part/k", "after"))
    assert.equal("after", assert(w:next()).kv.value)
    assert(m3:put("part/other", "x"))
    assert.equal("x", assert(w2:next()).kv.value)
  end))

  -- auto_sync: a client given one member (a follower, so that killing it starts no election)
  -- and an address that is no member learns the members from the list and drops the other
  local function urls_of(etcd)
    local out = {}
    for i, ep in ipairs(etcd.endpoints) do out[i] = ep.url end
    table.sort(out)
    return out
  end

  it("learns the other members with auto_sync and survives the death of the one it was given", co(function()
    local leader
    servers.until_true("a leader", function() leader = server:leader() return leader ~= nil end, 60)
    local seed = leader % 3 + 1
    local etcd = etcd_mod.new { endpoints = { server.endpoints[seed] }, auto_sync = 3600 }
    assert(etcd:put("sync/a", "1"))
    local want = { table.unpack(server.endpoints) }
    table.sort(want)
    assert.same(want, urls_of(etcd))
    assert.equal(server.endpoints[seed], assert(etcd:_target()).endpoint)
    -- an address that is no member is dropped
    local dead = "http://127.0.0.1:" .. servers.free_port()
    local other = etcd_mod.new { endpoints = { dead, server.endpoints[seed] }, auto_sync = 3600 }
    assert.equal("1", assert(other:get("sync/a")).value)
    assert.same(want, urls_of(other))
    server:kill(seed)
    assert.equal("1", assert(etcd:get("sync/a")).value)
    local failed
    for _, ep in ipairs(etcd.endpoints) do
      if ep.url == server.endpoints[seed] then failed = ep end
    end
    assert.is_true(failed.backoff.failures >= 1)
    -- read again from a live member: the dead one is still a member, and keeps its health
    local list = assert(etcd:sync())
    table.sort(list)
    assert.same(want, list)
    for _, ep in ipairs(etcd.endpoints) do
      if ep.url == server.endpoints[seed] then assert.equal(failed, ep) end
    end
    assert.has_error(function() etcd_mod.new { auto_sync = 0 } end,
      "bad option 'auto_sync' to 'new' (seconds above 0 expected)")
    server:restart(seed)
  end))

  -- as when every member the client knew was replaced: its only endpoint is dead, the
  -- address it was created with still serves
  it("reads the member list again after every endpoint failed", co(function()
    local etcd = etcd_mod.new { endpoints = { server.endpoints[2] }, auto_sync = 3600 }
    assert(etcd:put("sync/b", "1"))
    local dead = "http://127.0.0.1:" .. servers.free_port()
    etcd.endpoints, etcd.cur = { { url = dead, base = dead, backoff = require("coord.sched").backoff(0.1, 5), down_until = 0 } }, 1
    local kv, err = etcd:get("sync/b")
    assert.is_nil(kv)
    assert.equal("connect", err.kind)
    -- the next calls (one member list read per second at most) find the members again
    local got
    servers.until_true("a read after the refresh", function()
      got = etcd:get("sync/b")
      return got ~= nil
    end, 30)
    assert.equal("1", got.value)
    local want = { table.unpack(server.endpoints) }
    table.sort(want)
    assert.same(want, urls_of(etcd))
  end))

  it("keeps its endpoints when no member list can be read", co(function()
    local dead = "http://127.0.0.1:" .. servers.free_port()
    local etcd = etcd_mod.new { endpoints = { dead }, auto_sync = 3600 }
    local list, err = etcd:sync()
    assert.is_nil(list)
    assert.equal("connect", err.kind)
    assert.same({ dead }, urls_of(etcd))
    local kv, gerr = etcd:get("x")
    assert.is_nil(kv)
    assert.equal("connect", gerr.kind)
    assert.same({ dead }, urls_of(etcd))
  end))
end)

describe("coord.etcd retries", function()
  local server, peer

  setup(function()
    server = servers.etcd { version = "3.4" }
    peer = helpers.start_peer()
  end)

  teardown(function()
    if server then server:stop() end
    if peer then peer.stop() end
  end)

  -- The peer speaks HTTP/1.1 and its routes are paths: its clients use the JSON gateway
  -- whatever the run's transport (gRPC has fixed paths, spec/etcd_grpc_spec.lua).
  -- an endpoint whose every gateway path lands on one of the peer's routes
  local function faulty(route)
    return peer.url(route .. (route:find("?", 1, true) and "&to=" or "?to="))
  end

  it("retries reads but not writes on a connection that broke after the request was sent", co(function()
    local etcd = etcd_mod.new { endpoints = { faulty("/reset"), server.endpoint }, transport = "json" }
    local ok, err = etcd:put("retry/a", "1")
    assert.is_nil(ok)
    assert.equal("unknown", err.kind) -- it was sent: the outcome is unknown
    assert.equal("closed", err.cause)
    assert.is_true(err.maybe_applied)
    assert.is_nil(assert(etcd_mod.new { endpoints = { server.endpoint } }:range("retry/", { prefix = true }))[1])
    etcd = etcd_mod.new { endpoints = { faulty("/reset"), server.endpoint }, transport = "json" }
    local kv, _, h2 = etcd:get("retry/a")
    assert.is_nil(kv)
    assert.is_true(h2.revision > 0)
    assert.equal(server.endpoint, etcd:_target().url)
  end))

  it("moves on after a 503 for reads and reports it for writes", co(function()
    local etcd = etcd_mod.new { endpoints = { faulty("/status?code=503&body=busy"), server.endpoint }, transport = "json" }
    local ok, err = etcd:put("retry/b", "1")
    assert.is_nil(ok)
    assert.equal("unavailable", err.kind)
    assert.equal(503, err.status)
    etcd = etcd_mod.new { endpoints = { faulty("/status?code=503&body=busy"), server.endpoint }, transport = "json" }
    assert.is_nil((etcd:get("retry/b")))
    assert.equal(server.endpoint, etcd:_target().url)
  end))

  -- The peer answers every gateway path 3 s late (with a body that is not JSON), well inside
  -- the client's 30 s request timeout: only the call's own cap can end it sooner.
  it("caps a lock's and a campaign's whole call with their timeout, authentication and lease grant included", co(function()
    local etcd = etcd_mod.new { endpoints = { faulty("/slow?ms=3000") }, transport = "json", timeout = 30, user = "u", password = "p" }
    local lock, err = etcd:lock("cap/l", { timeout = 0.3, ttl = 1 })
    assert.is_nil(lock)
    assert.equal("timeout", err.kind)
    assert.equal("timed out after 0.3 s", err.message)
    -- without a user: the lease grant is capped
    etcd = etcd_mod.new { endpoints = { faulty("/slow?ms=3000") }, transport = "json", timeout = 30 }
    local l
    l, err = etcd:campaign("cap/e", "v", { timeout = 0.3, ttl = 1 })
    assert.is_nil(l)
    assert.equal("timeout", err.kind)
    assert.equal("timed out after 0.3 s", err.message)
  end))

  it("uses the environment's ETCDCTL_ENDPOINTS by default", function()
    -- a child lua5.4 with this process's environment (under make asan, its sanitizer too)
    local function run(env)
      local code = [[local e = require("coord.etcd").new() for _, ep in ipairs(e.endpoints) do print(ep.url) end]]
      local p = assert(io.popen(env .. " lua5.4 -e " .. servers.sh_quote(code) .. " 2>&1"))
      local out = p:read("a")
      return p:close(), out
    end
    local ok, out = run("ETCDCTL_ENDPOINTS=http://127.0.0.1:1,127.0.0.1:2")
    assert.is_true(ok, out)
    assert.equal("http://127.0.0.1:1\nhttp://127.0.0.1:2\n", out)
    ok, out = run("env -u ETCDCTL_ENDPOINTS")
    assert.is_true(ok, out)
    assert.equal("http://127.0.0.1:2379\n", out)
  end)
end)

describe("coord.etcd over a unix socket", function()
  local server

  setup(function()
    server = servers.etcd { version = "3.5", unix = true }
  end)

  teardown(function()
    if server then server:stop() end
  end)

  it("reads, writes and watches through a unix:///path endpoint", co(function()
    local path = server.members[1].unix_socket
    local etcd = etcd_mod.new { endpoints = { "unix://" .. path } }
    assert(etcd:put("ux/a", "1"))
    assert.equal("1", assert(etcd:get("ux/a")).value)
    local t = assert(etcd:_target())
    assert.equal(path, t.unix_socket)
    assert.equal("unix://" .. path, t.endpoint)
    local w <close> = etcd:watch("ux/a", { start_revision = 1 })
    assert.equal("1", assert(w:next()).kv.value)
    assert.equal("unix://" .. path, require("coord.etcd.watch").stats(etcd).connected)
    assert(etcd:put("ux/a", "2"))
    assert.equal("2", assert(w:next()).kv.value)
    local ok, out = server:ctl("get --print-value-only ux/a")
    assert.is_true(ok, out)
    assert.equal("2\n", out)
    local none = etcd_mod.new { endpoints = { "unix://" .. path .. ".none" } }
    local kv, err = none:get("ux/a")
    assert.is_nil(kv)
    assert.equal("connect", err.kind)
  end))
end)
