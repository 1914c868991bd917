-- spec/etcd_admin_spec.lua: etcd administration against real servers (3.4 and 3.5):
-- maintenance (alarms and NOSPACE recovery, defragment, hash_kv, snapshots that etcd's own
-- tools read and restore, leadership transfer), membership (a learner added, started,
-- promoted, updated and removed) and auth administration (users, roles, key ranges).

local coord = require "coord"
local core = require "coord.core"
local servers = require "servers"
local etcd_mod = require "etcd_client" -- coord.etcd with the run's transport

-- Runs a test body as a coroutine (see etcd_lease_spec.lua).
local function co(fn)
  return function() return coord.run(fn) end
end

local function hex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

-- The tool that reads a snapshot file of this version: 3.5's etcdutl when it is installed
-- next to its etcd, else etcdctl (3.4).
local function snapshot_tool(version)
  local etcdutl = servers.top .. "/.deps/apt-trixie/unpack/usr/bin/etcdutl"
  if version == "3.5" and io.open(etcdutl) then return servers.sh_quote(etcdutl) end
  return "ETCDCTL_API=3 " .. servers.sh_quote(servers.bin.etcdctl)
end

describe("core.sha256", function()
  it("hashes in pieces as in one go (FIPS 180-4 test vectors)", function()
    assert.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", hex(core.sha256():digest()))
    assert.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", hex(core.sha256():update("abc"):digest()))
    local msg = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
    local h = core.sha256()
    for i = 1, #msg, 5 do h:update(msg:sub(i, i + 4)) end
    assert.equal("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1", hex(h:digest()))
    assert.has_error(function() h:update("x") end)
  end)
end)

for _, version in ipairs { "3.4", "3.5" } do
  describe("etcd maintenance on etcd " .. version, function()
    local server, etcd

    setup(function()
      server = servers.etcd { version = version }
      etcd = etcd_mod.new { endpoints = { server.endpoint } }
    end)

    teardown(function()
      if server then server:stop() end
    end)

    it("lists no alarms, defragments, and hashes the key-value history", co(function()
      local list, err, header = etcd:alarms()
      assert.is_nil(err)
      assert.same({}, list)
      assert.equal("etcd.header", getmetatable(header).__name)
      local done = assert(etcd:alarm_disarm())
      assert.same({}, done)
      local ok, derr = etcd:defragment(server.endpoint, { timeout = 30 })
      assert.is_nil(derr)
      assert.is_true(ok)
      assert(etcd:put("hash/a", "1"))
      local h1, herr, hh = etcd:hash_kv(server.endpoint)
      if version == "3.4" and not etcd.grpc then
        -- 3.4's gateway sends /v3/maintenance/hash to the whole-database hash only (its
        -- gRPC has HashKV: with transport "grpc" this goes on, doc/grpc.md)
        assert.is_nil(h1)
        assert.equal("unsupported", herr.kind)
        return
      end
      assert.is_nil(herr)
      assert.equal("integer", math.type(h1.hash))
      assert.equal(hh.revision, h1.revision)
      assert(etcd:put("hash/a", "2"))
      local h2 = assert(etcd:hash_kv())
      assert.is_true(h2.revision > h1.revision)
      assert.are_not.equal(h1.hash, h2.hash)
      -- the history up to an older revision hashes as it did then
      local again = assert(etcd:hash_kv(nil, h1.revision))
      assert.equal(h1.hash, again.hash)
      assert.equal(h1.revision, again.revision)
    end))

    it("streams a snapshot to a file that etcd's tools read and restore", co(function()
      for i = 1, 50 do assert(etcd:put(("snap/%02d"):format(i), ("v"):rep(1000))) end
      local last = assert(etcd:get("snap/50")).mod_revision
      local path = server.dir .. "/backup.db"
      local res, err, header = etcd:snapshot(path)
      assert.is_nil(err)
      assert.equal("etcd.header", getmetatable(header).__name)
      local data = assert(servers.read_file(path))
      assert.equal(#data, res.size)
      assert.is_true(res.size > 50000)
      -- the file ends with the SHA-256 of the bytes before it, as etcd sent it
      assert.equal(hex(data:sub(-32)), res.sha256)
      assert.equal(hex(core.sha256():update(data:sub(1, -33)):digest()), res.sha256)
      assert.equal(server.endpoint, res.endpoint)
      local tool = snapshot_tool(version)
      local ok, out = servers.sh(tool .. " snapshot status -w json " .. servers.sh_quote(path))
      assert.is_true(ok, out)
      local st = core.json_decode(out:match("{.*}"))
      assert.equal(last, math.tointeger(st.revision))
      assert.is_true(st.totalKey >= 50)
      -- restore checks the checksum too
      ok, out = servers.sh(tool .. " snapshot restore " .. servers.sh_quote(path) .. " --data-dir "
        .. servers.sh_quote(server.dir .. "/restored"))
      assert.is_true(ok, out)
      -- no temporary file is left behind, and a failed snapshot leaves the old file alone
      local _, ls = servers.sh("ls " .. servers.sh_quote(server.dir))
      assert.is_nil(ls:find(".part", 1, true))
      local bad, berr = etcd:snapshot(server.dir .. "/no/such/dir/x.db")
      assert.is_nil(bad)
      assert.equal("io", berr.kind)
      assert.equal(data, servers.read_file(path))
    end))

    it("raises on bad arguments", function()
      assert.has_error(function() etcd:snapshot(1) end, "bad argument #1 to 'snapshot' (string expected, got integer)")
      assert.has_error(function() etcd:alarm_disarm(1, "full") end)
      assert.has_error(function() etcd:alarm_disarm(nil, "nospace") end)
      assert.has_error(function() etcd:defragment("ftp://x") end)
      assert.has_error(function() etcd:move_leader("1") end, "bad argument #1 to 'move_leader' (integer expected, got string)")
      assert.has_error(function() etcd:hash_kv(nil, 1.5) end)
    end)
  end)

  describe("NOSPACE recovery on etcd " .. version, function()
    local server, etcd

    setup(function()
      server = servers.etcd { version = version, args = "--quota-backend-bytes=1048576" }
      etcd = etcd_mod.new { endpoints = { server.endpoint }, timeout = 20 }
    end)

    teardown(function()
      if server then server:stop() end
    end)

    it("raises the alarm when full; compact, defragment and disarm make room again", co(function()
      local big = ("x"):rep(100000)
      local werr
      for i = 1, 100 do
        local ok, err = etcd:put("fill/" .. (i % 3), big)
        if not ok then
          werr = err
          break
        end
      end
      assert.is_truthy(werr, "the quota was never reached")
      assert.equal("exhausted", werr.kind)
      assert.is_truthy(werr.message:find("database space exceeded", 1, true), werr.message)
      local list = assert(etcd:alarms())
      assert.equal(1, #list)
      assert.equal("nospace", list[1].alarm)
      local st = assert(etcd:status())
      assert.equal(st.member_id, list[1].member_id)
      -- every write is refused while the alarm is on, however small
      local ok, err = etcd:put("small", "1")
      assert.is_nil(ok)
      assert.equal("exhausted", err.kind)
      -- reads still work: the fill keys were the only writes, so the newest of them is the
      -- current revision; compacting there drops every older value
      local rev = 0
      for _, kv in ipairs(assert(etcd:range("fill/", { prefix = true, keys_only = true }))) do
        rev = math.max(rev, kv.mod_revision)
      end
      assert(etcd:compact(rev, { physical = true }))
      assert.is_true((assert(etcd:defragment())))
      local done = assert(etcd:alarm_disarm())
      assert.equal(1, #done)
      assert.equal("nospace", done[1].alarm)
      assert.same({}, (assert(etcd:alarms())))
      assert(etcd:put("small", "1"))
      assert.equal("1", assert(etcd:get("small")).value)
    end))
  end)

  describe("etcd membership on etcd " .. version, function()
    local server, etcd, joined

    setup(function()
      server = servers.etcd { version = version }
      etcd = etcd_mod.new { endpoints = { server.endpoint }, timeout = 15 }
    end)

    teardown(function()
      if joined then joined.proc:stop() end
      if server then server:stop() end
    end)

    it("adds a learner, promotes it once it has caught up, moves the leadership, updates and removes it", co(function()
      local peer_port = servers.free_port()
      local m, err, header = etcd:member_add("http://127.0.0.1:" .. peer_port, { learner = true })
      assert.is_nil(err)
      assert.is_true(m.is_learner)
      assert.equal("integer", math.type(m.id))
      assert.same({ "http://127.0.0.1:" .. peer_port }, m.peer_urls)
      assert.equal("etcd.header", getmetatable(header).__name)
      local listed = {}
      for _, x in ipairs(assert(etcd:members())) do listed[x.id] = x end
      assert.is_true(listed[m.id].is_learner)
      -- not started yet, so it cannot be in sync with the leader
      local ok, perr = etcd:member_promote(m.id)
      assert.is_nil(ok)
      assert.equal("not_ready", perr.kind)
      joined = server:join(peer_port)
      servers.until_true("learner promoted", function()
        local done, e = etcd:member_promote(m.id)
        if done then return true end
        assert.equal("not_ready", e.kind, tostring(e))
        return false
      end, 60, joined.proc)
      for _, x in ipairs(assert(etcd:members())) do listed[x.id] = x end
      assert.is_false(listed[m.id].is_learner)
      -- promoting a voting member can never work. etcd 3.4 checks that the member is in sync
      -- before it checks that it is a learner: a new voter still catching up is "not_ready"
      -- first, then "invalid" for good.
      servers.until_true("promote of a voter refused as invalid", function()
        ok, perr = etcd:member_promote(m.id)
        assert.is_nil(ok)
        if perr.kind == "not_ready" then return false end
        assert.equal("invalid", perr.kind, tostring(perr))
        return true
      end, 60, joined.proc)

      if version == "3.5" then
        -- the new member holds the same history: it hashes alike at the same revision
        local rev = assert(etcd:hash_kv(server.endpoint)).revision
        servers.until_true("members hash alike", function()
          local a, b = etcd:hash_kv(server.endpoint, rev), etcd:hash_kv(joined.url, rev)
          return a and b and a.hash == b.hash
        end, 30, joined.proc)
      end

      local first = assert(etcd:status(server.endpoint)).member_id
      assert.is_true((assert(etcd:move_leader(m.id))))
      servers.until_true("leadership moved", function()
        local st = etcd:status(server.endpoint)
        return st and st.leader == m.id
      end, 30)
      assert.is_true((assert(etcd:move_leader(first))))
      servers.until_true("leadership moved back", function()
        local st = etcd:status(server.endpoint)
        return st and st.leader == first
      end, 30)

      assert.is_true((assert(etcd:member_update(m.id, { "http://localhost:" .. peer_port }))))
      for _, x in ipairs(assert(etcd:members())) do listed[x.id] = x end
      assert.same({ "http://localhost:" .. peer_port }, listed[m.id].peer_urls)

      -- etcd refuses to remove a member ("unhealthy cluster") until the ones left have been
      -- connected for 5 s: the leadership moves may have just renewed the connections
      servers.until_true("member removed", function()
        local done, e = etcd:member_remove(m.id)
        if done then return true end
        assert.equal("unavailable", e.kind, tostring(e))
        return false
      end, 30)
      local after = assert(etcd:members())
      assert.equal(1, #after)
      assert.equal(first, after[1].id)
      ok, err = etcd:member_remove(m.id)
      assert.is_nil(ok)
      assert.equal("not_found", err.kind)
      assert(etcd:put("after/remove", "1"))
    end))

    it("raises on bad peer URLs", function()
      assert.has_error(function() etcd:member_add({}) end)
      assert.has_error(function() etcd:member_add("127.0.0.1:2380") end)
      assert.has_error(function() etcd:member_add("http://127.0.0.1:1", { learner = "yes" }) end)
      assert.has_error(function() etcd:member_update(1, nil) end)
      assert.has_error(function() etcd:member_remove("1") end)
    end)
  end)

  describe("etcd auth administration on etcd " .. version, function()
    local server, admin

    setup(function()
      server = servers.etcd { version = version }
      admin = etcd_mod.new { endpoints = { server.endpoint } }
    end)

    teardown(function()
      if server then server:stop() end
    end)

    it("enables auth; a user with a prefix role reads and writes its prefix only", co(function()
      assert(admin:user_add("root", "rootpw"))
      assert(admin:role_add("root"))
      assert(admin:user_grant_role("root", "root"))
      assert(admin:role_add("app"))
      local ok, err, header = admin:role_grant("app", "app/", { prefix = true, perm = "readwrite" })
      assert.is_nil(err)
      assert.is_true(ok)
      assert.equal("etcd.header", getmetatable(header).__name)
      assert(admin:role_grant("app", "conf/a", { range_end = "conf/c", perm = "read" }))
      assert(admin:user_add("alice", "alicepw"))
      assert(admin:user_grant_role("alice", "app"))

      local role = assert(admin:role_get("app"))
      table.sort(role.perms, function(a, b) return a.key < b.key end)
      assert.same({ name = "app", perms = {
        { perm = "readwrite", key = "app/", range_end = "app0" },
        { perm = "read", key = "conf/a", range_end = "conf/c" },
      } }, role)
      assert.same({ name = "alice", roles = { "app" } }, (assert(admin:user_get("alice"))))
      assert.same({ "alice", "root" }, (assert(admin:user_list())))
      assert.same({ "app", "root" }, (assert(admin:role_list())))
      -- absent is nil, nil; an existing name is a conflict
      local u, uerr = admin:user_get("nobody")
      assert.is_nil(u)
      assert.is_nil(uerr)
      assert.is_nil((admin:role_get("nobody")))
      ok, err = admin:user_add("alice", "x")
      assert.is_nil(ok)
      assert.equal("conflict", err.kind)
      ok, err = admin:role_revoke("app", "nothing/")
      assert.is_nil(ok)
      assert.equal("not_found", err.kind)
      assert(admin:put("conf/b", "B"))
      assert(admin:put("other/x", "X"))

      assert(admin:auth_enable())
      ok, err = admin:get("other/x")
      assert.is_nil(ok)
      assert.equal("auth", err.kind)

      local alice = etcd_mod.new { endpoints = { server.endpoint }, user = "alice", password = "alicepw" }
      assert(alice:put("app/x", "1"))
      assert.equal("1", assert(alice:get("app/x")).value)
      assert.equal("B", assert(alice:get("conf/b")).value)
      local kv, gerr = alice:get("other/x")
      assert.is_nil(kv)
      assert.equal("permission", gerr.kind)
      ok, err = alice:put("conf/b", "no")
      assert.is_nil(ok)
      assert.equal("permission", err.kind)
      -- only root administers
      ok, err = alice:user_add("mallory", "x")
      assert.is_nil(ok)
      assert.equal("permission", err.kind)

      local root = etcd_mod.new { endpoints = { server.endpoint }, user = "root", password = "rootpw" }
      -- a snapshot needs root: the stream carries the token, and a refusal reads as the server's
      local path = server.dir .. "/auth.db"
      assert.is_true(assert(root:snapshot(path)).size > 32)
      local snap, serr = alice:snapshot(path .. ".alice")
      assert.is_nil(snap)
      assert.equal("permission", serr.kind, tostring(serr))
      assert.is_nil(servers.read_file(path .. ".alice"))
      assert(root:role_revoke("app", "conf/a", { range_end = "conf/c" }))
      kv, gerr = alice:get("conf/b")
      assert.is_nil(kv)
      assert.equal("permission", gerr.kind)
      assert(root:user_change_password("alice", "newpw"))
      local stale = etcd_mod.new { endpoints = { server.endpoint }, user = "alice", password = "alicepw" }
      kv, gerr = stale:get("app/x")
      assert.is_nil(kv)
      assert.equal("auth", gerr.kind)
      local renewed = etcd_mod.new { endpoints = { server.endpoint }, user = "alice", password = "newpw" }
      assert.equal("1", assert(renewed:get("app/x")).value)
      assert(root:user_revoke_role("alice", "app"))
      kv, gerr = renewed:get("app/x")
      assert.is_nil(kv)
      assert.equal("permission", gerr.kind)
      assert(root:user_delete("alice"))
      assert(root:role_delete("app"))
      assert.same({ "root" }, (assert(root:user_list())))
      ok, err = root:user_delete("alice")
      assert.is_nil(ok)
      assert.equal("not_found", err.kind)

      assert(root:auth_disable())
      assert.equal("X", assert(admin:get("other/x")).value)
    end))

    it("raises on bad arguments", function()
      assert.has_error(function() admin:user_add("u") end, "bad argument #2 to 'user_add' (string expected, got nil)")
      assert.has_error(function() admin:role_grant("r", "k", { perm = "all" }) end)
      assert.has_error(function() admin:role_grant("r", "k", { prefix = true, range_end = "z" }) end)
      assert.has_error(function() admin:user_grant_role("u", 1) end)
      assert.has_error(function() admin.role_add("r") end, "calling 'role_add' on bad self (use ':')")
    end)
  end)
end
