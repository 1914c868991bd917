-- spec/mirror_snapshot_spec.lua: coord.mirror's snapshot file (opts.snapshot) on real etcd and
-- Consul servers: booting from it with the backend down or unresponsive, going live with only
-- the differing keys reported, one file per mirror, and refusing corrupt or foreign files.

local coord = require "coord"
local servers = require "servers"
local etcd_client = require "etcd_client" -- coord.etcd with the run's transport

-- What these specs need of each backend. down() takes the server away for good (etcd:
-- SIGKILL; Consul: stopped with its data), proc() is the process to pause with SIGSTOP.
local backends = {
  etcd = {
    start = function() return servers.etcd {} end,
    client = function(srv) return etcd_client.new { endpoints = { srv.endpoint } } end,
    dead = function(port) return etcd_client.new { endpoints = { "http://127.0.0.1:" .. port } } end,
    version = function(c, k) return assert(c:get(k)).mod_revision, "" end,
    put = function(c, k, v) return assert(c:put(k, v)) end,
    delete = function(c, k) return assert(c:delete(k)) end,
    down = function(srv) srv:kill(1) end,
    up = function(srv) srv:restart(1) end, -- with its data
    proc = function(srv) return srv.members[1].proc end,
    -- any bytes in keys and values
    odd_key = "\0\255 key\r\n%/",
  },
  consul = {
    start = function() return servers.consul {} end,
    client = function(srv) return coord.consul.new { address = srv.address } end,
    dead = function(port) return coord.consul.new { address = "http://127.0.0.1:" .. port } end,
    -- the version and the tag (doc/mirror.md: "flags:session") of a key
    version = function(c, k)
      local e = assert(c.kv:get(k))
      return e.modify_index, ("%d:%s"):format(e.flags, e.session or "")
    end,
    put = function(c, k, v) return assert(c.kv:put(k, v)) end,
    delete = function(c, k) return assert(c.kv:delete(k)) end,
    down = function(srv) srv:down() end,
    up = function(srv) srv:up() end, -- a fresh agent, without data
    proc = function(srv) return srv.proc end,
    -- any bytes a KV URL can address
    odd_key = "k\195\164y with space%25&?#",
  },
}

local dir
setup(function() dir = servers.tmpdir() end)
teardown(function() if dir then servers.rmdir(dir) end end)

local files = 0
local function file_name()
  files = files + 1
  return ("%s/snap%d"):format(dir, files)
end

-- A snapshot file in the documented format (doc/mirror.md), written by hand: records are
-- {key, raw, version, tag}.
local MAGIC, END = "coord-mirror-snapshot\n", "end\n"
local function encode(backend, prefix, records, format)
  local parts = { MAGIC, string.pack("<I4s4s4jjI4", format or 1, backend, prefix, 42, os.time(), #records) }
  for _, r in ipairs(records) do parts[#parts + 1] = string.pack("<s4s4js4", r[1], r[2], r[3] or 1, r[4] or "") end
  parts[#parts + 1] = END
  return table.concat(parts)
end
local function write(s)
  local path = file_name()
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
  return path
end

local function synced(m) return m:status().synced end
local function source(m) return m:status().source end

-- Asserts that a mirror started against a paused server (proc) took its data from the file;
-- a failure says what the server process was doing and where the mirror's data came from.
local function assert_from_file(m, proc)
  local st = m:status()
  local state = proc:state() or "gone"
  assert.are.equal("snapshot", st.source, ("source %s, server process state %s, position %s, changes %s")
    :format(tostring(st.source), state, tostring(st.revision or st.index), tostring(st.changes)))
end

-- Waits until the mirror's status satisfies check; a failure says what the status was.
local function await(m, what, check, limit)
  local ok, err = m:wait(check, limit or 15)
  local st = m:status()
  assert(ok, ("%s: %s (source %s, error %s)"):format(what, tostring(err), tostring(st.source), tostring(st.error)))
end

-- A mirror that has synced, then closed: its file holds what it saw.
local function make_file(client, prefix, path)
  local m <close> = coord.mirror(client, prefix, { snapshot = path })
  await(m, "first mirror synced", synced)
  return m:status()
end

-- Records changes as "key:old>new".
local function recorder()
  local seen = {}
  return seen, function(k, new, old) seen[#seen + 1] = ("%s:%s>%s"):format(k, tostring(old), tostring(new)) end
end

for _, name in ipairs { "etcd", "consul" } do
  local b = backends[name]
  local position = name == "etcd" and "revision" or "index"

  describe("coord.mirror snapshot on " .. name, function()
    it("starts from its snapshot when the backend is down before start, and goes live when it is back", function()
      local srv <close> = b.start()
      local c = b.client(srv)
      local path = file_name()
      local values = { ["s/plain"] = "1", ["s/" .. b.odd_key] = "\0\1\2\255 bytes\r\n", ["s/empty"] = "" }
      coord.run(function()
        for k, v in pairs(values) do b.put(c, k, v) end
        local before = make_file(c, "s/", path)
        b.down(srv)
        local seen, hook = recorder()
        local m <close> = coord.mirror(b.client(srv), "s/", { snapshot = path, on_change = hook,
          snapshot_after = 60, max_backoff = 0.5 }) -- a refused connection loads the file at once
        await(m, "loaded from the snapshot", source)
        local st = m:status()
        assert.are.equal("snapshot", st.source)
        assert.is_false(st.synced)
        assert.are.equal(before[position], st[position])
        assert.is_true(math.type(st.snapshot_time) == "integer" and math.abs(st.snapshot_time - os.time()) < 120)
        assert.is_true(st.source_since <= coord.now())
        assert.are.equal("connect", st.error.kind) -- the backend's error, not the file's
        assert.is_nil(st.snapshot_error)
        local all, want = {}, {}
        for k, v in pairs(m) do all[k] = v end
        assert.are.same(values, all)
        for k, v in pairs(values) do want[#want + 1] = ("%s:nil>%s"):format(k, v) end
        table.sort(want)
        table.sort(seen)
        assert.are.same(want, seen)
        for i = #seen, 1, -1 do seen[i] = nil end
        b.up(srv)
        await(m, "live", function() return m:status().source == "live" end, 40)
        assert.is_true(m:status().synced)
        if name == "etcd" then
          assert.are.same({}, seen) -- the server has what the file had
        else
          want = {}
          for k, v in pairs(values) do want[#want + 1] = ("%s:%s>nil"):format(k, v) end
          table.sort(want)
          table.sort(seen)
          assert.are.same(want, seen) -- a fresh agent holds nothing
        end
      end)
    end)

    it("goes live when the backend answers, reporting only the keys that differ", function()
      local srv <close> = b.start()
      local c = b.client(srv)
      local path = file_name()
      coord.run(function()
        for _, k in ipairs { "keep", "change", "remove" } do b.put(c, "d/" .. k, "1") end
        make_file(c, "d/", path)
        b.put(c, "d/change", "2")
        b.delete(c, "d/remove")
        b.put(c, "d/add", "1")
        -- a paused server accepts connections and answers nothing: the mirror waits
        -- snapshot_after for it, then takes the file
        local proc = b.proc(srv)
        proc:pause()
        local paused <close> = setmetatable({}, { __close = function() proc:send("CONT") end })
        local seen, hook = recorder()
        local m <close> = coord.mirror(b.client(srv), "d/", { snapshot = path, on_change = hook,
          snapshot_after = 0.5, max_backoff = 0.5 })
        await(m, "loaded from the snapshot", source)
        assert_from_file(m, proc)
        table.sort(seen)
        assert.are.same({ "d/change:nil>1", "d/keep:nil>1", "d/remove:nil>1" }, seen)
        for i = #seen, 1, -1 do seen[i] = nil end
        proc:send("CONT")
        await(m, "live", function() return m:status().source == "live" end, 40)
        table.sort(seen)
        assert.are.same({ "d/add:nil>1", "d/change:1>2", "d/remove:1>nil" }, seen)
        local st = m:status()
        assert.is_true(st.synced)
        assert.is_nil(st.snapshot_time)
        assert.are.equal("2", m:get("d/change"))
      end)
    end)

    it("compares the live data with the file by content, not by version", function()
      local srv <close> = b.start()
      local c = b.client(srv)
      coord.run(function()
        b.put(c, "v/a", "live")
        b.put(c, "v/b", "same")
        -- a file (say, of another cluster) whose versions are the live ones, with another value
        local va, ta = b.version(c, "v/a")
        local vb, tb = b.version(c, "v/b")
        local path = write(encode(name, "v/", { { "v/a", "from file", va, ta }, { "v/b", "same", vb, tb } }))
        local proc = b.proc(srv)
        proc:pause()
        local paused <close> = setmetatable({}, { __close = function() proc:send("CONT") end })
        local seen, hook = recorder()
        local m <close> = coord.mirror(b.client(srv), "v/", { snapshot = path, on_change = hook,
          snapshot_after = 0.3, max_backoff = 0.5 })
        await(m, "loaded from the snapshot", source)
        assert_from_file(m, proc)
        assert.are.equal("from file", m:get("v/a"))
        for i = #seen, 1, -1 do seen[i] = nil end
        proc:send("CONT")
        await(m, "live", function() return m:status().source == "live" end, 40)
        assert.are.same({ "v/a:from file>live" }, seen)
        assert.are.equal("live", m:get("v/a"))
      end)
    end)

    it("keeps one file per mirror", function()
      local srv <close> = b.start()
      local c = b.client(srv)
      local one, two = file_name(), file_name()
      coord.run(function()
        b.put(c, "one/k", "first")
        b.put(c, "two/k", "second")
        make_file(c, "one/", one)
        make_file(c, "two/", two)
        b.down(srv)
        local dead = b.client(srv)
        local m1 <close> = coord.mirror(dead, "one/", { snapshot = one })
        local m2 <close> = coord.mirror(dead, "two/", { snapshot = two })
        await(m1, "first loaded", source)
        await(m2, "second loaded", source)
        assert.are.equal("first", m1:get("one/k"))
        assert.is_nil(m1:get("two/k"))
        assert.are.equal("second", m2:get("two/k"))
        assert.is_nil(m2:get("one/k"))
      end)
    end)

    it("refuses a snapshot of another prefix, saying so", function()
      local srv <close> = b.start()
      local c = b.client(srv)
      local path = file_name()
      coord.run(function()
        b.put(c, "mine/k", "v")
        make_file(c, "mine/", path)
        b.down(srv)
        local seen, hook = recorder()
        local m <close> = coord.mirror(b.client(srv), "other/", { snapshot = path, on_change = hook })
        await(m, "snapshot refused", function() return m:status().snapshot_error ~= nil end)
        local st = m:status()
        assert.are.equal("snapshot", st.error.kind)
        assert.are.equal(st.error, st.snapshot_error)
        assert.truthy(tostring(st.error):find('is of prefix "mine/", not of "other/"', 1, true), tostring(st.error))
        assert.are.equal(path, st.error.path)
        assert.is_nil(st.source)
        for k in pairs(m) do error("the mirror holds " .. k) end
        assert.are.same({}, seen)
      end)
    end)

    it("rewrites its file after changes", function()
      local srv <close> = b.start()
      local c = b.client(srv)
      local path = file_name()
      coord.run(function()
        local m <close> = coord.mirror(c, "w/", { snapshot = path, snapshot_interval = 0.2 })
        await(m, "synced", synced)
        -- the first sync writes the (empty) table
        servers.until_true("first write", function() return servers.read_file(path) ~= nil end, 10)
        b.put(c, "w/k", "written-value-1")
        servers.until_true("change written", function()
          return (servers.read_file(path) or ""):find("written-value-1", 1, true) ~= nil
        end, 10)
        assert.is_nil(m:status().snapshot_error)
      end)
    end)

    it("reports a file it cannot write, and carries on", function()
      local srv <close> = b.start()
      local c = b.client(srv)
      coord.run(function()
        local m <close> = coord.mirror(c, "nw/", { snapshot = dir .. "/no/such/dir/snap" })
        await(m, "write failure", function() return m:status().snapshot_error ~= nil end)
        local err = m:status().snapshot_error
        assert.are.equal("snapshot", err.kind)
        assert.truthy(tostring(err):find("cannot write", 1, true), tostring(err))
        b.put(c, "nw/k", "1")
        assert.is_true(m:wait("nw/k", 10))
        assert.are.equal("live", m:status().source)
      end)
    end)
  end)
end

-- Files written here by hand in the documented format (doc/mirror.md), loaded by mirrors whose
-- backend cannot be reached at all (nothing listens on their port).
describe("coord.mirror snapshot files", function()

  -- The mirror's state after it tried the file at path (its first read fails at once).
  local function boot(backend, prefix, path)
    local port = servers.free_port()
    local st, data
    coord.run(function()
      local m <close> = coord.mirror(backends[backend].dead(port), prefix, { snapshot = path })
      await(m, "snapshot tried", function() return m:status().source or m:status().snapshot_error end)
      st, data = m:status(), {}
      for k, v in pairs(m) do data[k] = v end
    end)
    return st, data
  end

  local good = encode("etcd", "p/", { { "p/a", "x\0y", 7 }, { "p/b", "", 9 } })

  it("loads a file in the documented format", function()
    local st, data = boot("etcd", "p/", write(good))
    assert.are.equal("snapshot", st.source)
    assert.are.equal(42, st.revision)
    assert.are.same({ ["p/a"] = "x\0y", ["p/b"] = "" }, data)
    local cst, cdata = boot("consul", "p/", write(encode("consul", "p/", { { "p/c", "v", 3, "0:" } })))
    assert.are.equal("snapshot", cst.source)
    assert.are.equal(42, cst.index)
    assert.are.same({ ["p/c"] = "v" }, cdata)
  end)

  -- each case: the file's bytes, the backend and prefix of the mirror, and what the error says
  local cases = {
    { "garbage", "\127ELF\2\1\1 not a snapshot at all", "etcd", "is not a coord mirror snapshot" },
    { "an empty file", "", "consul", "is not a coord mirror snapshot" },
    { "a truncated header", good:sub(1, #MAGIC + 10), "etcd", "is truncated (in its header)" },
    { "a truncated record", good:sub(1, #good - #END - 3), "etcd", "is truncated (at record 2 of 2)" },
    { "a missing end mark", good:sub(1, #good - 2), "etcd", "is truncated (no end mark)" },
    { "bytes after the end", good .. "more", "etcd", "is corrupt (after its last record)" },
    { "another backend", good, "consul", "is of a etcd mirror, not of a consul one" },
    { "another prefix", good, "etcd", 'prefix "p/", not of "q/"', "q/" },
    { "a key outside its prefix", encode("etcd", "p/", { { "elsewhere", "v" } }), "etcd", "is corrupt (record 1" },
    { "another format", encode("etcd", "p/", {}, 9), "etcd", "has format 9; this coord reads format 1" },
  }
  for _, case in ipairs(cases) do
    local what, bytes, backend, says, prefix = case[1], case[2], case[3], case[4], case[5] or "p/"
    it("refuses " .. what .. ", saying so, and stays empty", function()
      local st, data = boot(backend, prefix, write(bytes))
      assert.is_nil(st.source)
      assert.are.same({}, data)
      assert.are.equal("snapshot", st.error.kind)
      assert.truthy(tostring(st.error):find(says, 1, true), tostring(st.error))
    end)
  end

  it("says so when there is no file yet", function()
    local st, data = boot("etcd", "p/", dir .. "/never-written")
    assert.is_nil(st.source)
    assert.are.same({}, data)
    assert.are.equal("snapshot", st.error.kind)
    assert.truthy(tostring(st.error):find("cannot read snapshot file", 1, true), tostring(st.error))
  end)

  it("refuses bad options", function()
    local c = backends.etcd.dead(servers.free_port())
    assert.has_error(function() coord.mirror(c, "p/", { snapshot = 42 }) end)
    assert.has_error(function() coord.mirror(c, "p/", { snapshot = "" }) end)
    assert.has_error(function() coord.mirror(c, "p/", { snapshot = "f", snapshot_interval = -1 }) end)
    assert.has_error(function() coord.mirror(c, "p/", { snapshot = "f", snapshot_after = "soon" }) end)
  end)
end)
