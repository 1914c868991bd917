-- spec/etcd_spec.lua: coord.etcd key-value calls and transactions against real etcd 3.4 and
-- 3.5 members.

local servers = require "servers"
local etcd_mod = require "etcd_client" -- coord.etcd with the run's transport

local function all_bytes()
  local t = {}
  for b = 0, 255 do t[#t + 1] = string.char(b) end
  return table.concat(t)
end

local function keys_of(kvs)
  local t = {}
  for i, kv in ipairs(kvs) do t[i] = kv.key end
  return t
end

for _, version in ipairs { "3.4", "3.5" } do
  describe("coord.etcd KV on etcd " .. version, function()
    local server, etcd

    setup(function()
      server = servers.etcd { version = version }
      etcd = etcd_mod.new { endpoints = { server.endpoint } }
    end)

    teardown(function()
      if server then server:stop() end
    end)

    it("puts and gets a key with exact integer fields", function()
      local ok, perr, h = etcd:put("kv/a", "1")
      assert.is_true(ok)
      assert.is_nil(perr)
      assert.equal("integer", math.type(h.revision))
      local kv, err, h2 = etcd:get("kv/a")
      assert.is_nil(err)
      assert.same({ key = "kv/a", value = "1", create_revision = h.revision, mod_revision = h.revision,
        version = 1, lease = 0 }, kv)
      for _, f in ipairs { "create_revision", "mod_revision", "version", "lease" } do
        assert.equal("integer", math.type(kv[f]))
      end
      assert.equal(h.revision, h2.revision)
      assert.equal("integer", math.type(h2.member_id))
      assert.equal("integer", math.type(h2.cluster_id))
    end)

    it("reads a missing key as nil, nil, header", function()
      local kv, err, h = etcd:get("kv/absent")
      assert.is_nil(kv)
      assert.is_nil(err)
      assert.is_true(h.revision > 0)
      assert.equal(3, select("#", etcd:get("kv/absent")))
    end)

    it("follows the 0.2 return convention: err only second, header third, extras fourth", function()
      -- a header reads well
      local _, _, h = etcd:put("conv/a", "1")
      assert.matches("^etcd%.header{cluster_id=%-?%d+, member_id=%-?%d+, raft_term=%d+, revision=" .. h.revision .. "}$",
        tostring(h))
      -- put with prev_kv: true, nil, header, prev_kv (nil when the key was new)
      local ok, err, h2, prev = etcd:put("conv/a", "2", { prev_kv = true })
      assert.is_true(ok)
      assert.is_nil(err)
      assert.equal(h.revision + 1, h2.revision)
      assert.equal("1", prev.value)
      ok, err, h2, prev = etcd:put("conv/new", "x", { prev_kv = true })
      assert.is_true(ok)
      assert.is_nil(err)
      assert.is_true(h2.revision > h.revision)
      assert.is_nil(prev)
      -- delete with prev_kv: n, nil, header, prev_kvs; nothing deleted is 0, not an error
      local n, derr, dh, prevs = etcd:delete("conv/new", { prev_kv = true })
      assert.equal(1, n)
      assert.is_nil(derr)
      assert.is_true(dh.revision > h2.revision)
      assert.equal("x", prevs[1].value)
      n, derr, dh = etcd:delete("conv/new")
      assert.equal(0, n)
      assert.is_nil(derr)
      assert.is_truthy(dh.revision)
      -- lost races: false, nil, header, current
      local cur
      ok, err, h2, cur = etcd:create("conv/a", "3")
      assert.is_false(ok)
      assert.is_nil(err)
      assert.is_truthy(h2.revision)
      assert.equal("2", cur.value)
      ok, err, h2, cur = etcd:replace("conv/a", "nope", "3")
      assert.is_false(ok)
      assert.is_nil(err)
      assert.is_truthy(h2.revision)
      assert.equal("2", cur.value)
      ok, err, h2, cur = etcd:update("conv/a", "3", cur.mod_revision - 1)
      assert.is_false(ok)
      assert.is_nil(err)
      assert.is_truthy(h2.revision)
      assert.equal("2", cur.value)
      ok, err, h2, cur = etcd:delete_if("conv/absent", 1)
      assert.is_false(ok)
      assert.is_nil(err)
      assert.is_truthy(h2.revision)
      assert.is_nil(cur)
      -- a won race: true, nil, header
      ok, err, h2 = etcd:update("conv/a", "3", etcd:get("conv/a").mod_revision)
      assert.is_true(ok)
      assert.is_nil(err)
      assert.is_truthy(h2.revision)
      -- a txn whose compare failed is a result, not false and not an error
      local res, terr, th = etcd:txn { compare = { { key = "conv/a", value = "nope" } } }
      assert.is_false(res.succeeded)
      assert.is_nil(terr)
      assert.is_truthy(th.revision)
      -- compact: true, nil, header
      ok, err, h2 = etcd:compact(h.revision)
      assert.is_true(ok)
      assert.is_nil(err)
      assert.is_truthy(h2.revision)
      -- a failure is nil, err: the error second only, and it reads well
      local r = table.pack(etcd:get("conv/a", { revision = h.revision - 1 }))
      assert.equal(2, r.n)
      assert.is_nil(r[1])
      assert.equal("compacted", r[2].kind)
      assert.matches("^compacted 400: .*compacted", tostring(r[2]))
      local down = etcd_mod.new { endpoints = { "http://127.0.0.1:1" }, timeout = 1 }
      r = table.pack(down:put("conv/a", "x"))
      assert.equal(2, r.n)
      assert.is_nil(r[1])
      assert.equal("connect", r[2].kind)
      assert.matches("^connect: ", tostring(r[2]))
    end)

    it("reads a key at an older revision and returns the previous kv on put", function()
      local _, _, h1 = assert(etcd:put("kv/rev", "one"))
      local _, _, h2, prev = etcd:put("kv/rev", "two", { prev_kv = true })
      assert.equal("one", prev.value)
      assert.equal(h1.revision, prev.mod_revision)
      assert.equal("one", etcd:get("kv/rev", { revision = h1.revision }).value)
      local now = etcd:get("kv/rev")
      assert.equal("two", now.value)
      assert.equal(2, now.version)
      assert.equal(h2.revision, now.mod_revision)
    end)

    it("keeps the value or the lease with ignore_value and ignore_lease", function()
      local lease = assert(etcd:grant(60))
      assert(etcd:put("kv/ign", "v", { lease = lease.id }))
      assert(etcd:put("kv/ign", nil, { ignore_value = true, ignore_lease = true }))
      local kv = etcd:get("kv/ign")
      assert.equal("v", kv.value)
      assert.equal(lease.id, kv.lease)
      assert.equal(2, kv.version)
      assert(etcd:put("kv/ign", "w", { ignore_lease = true }))
      kv = etcd:get("kv/ign")
      assert.equal("w", kv.value)
      assert.equal(lease.id, kv.lease)
      assert(etcd:revoke(lease.id))
      assert.is_nil(etcd:get("kv/ign"))
    end)

    it("lists a prefix with limit, sort, keys_only and count_only", function()
      for i = 1, 5 do assert(etcd:put("list/" .. i, ("v"):rep(i))) end
      assert(etcd:put("list0", "outside"))
      local kvs = assert(etcd:range("list/", { prefix = true }))
      assert.same({ "list/1", "list/2", "list/3", "list/4", "list/5" }, keys_of(kvs))
      assert.equal(5, kvs.count)
      assert.is_false(kvs.more)
      kvs = assert(etcd:range("list/", { prefix = true, limit = 2, sort_order = "descend" }))
      assert.same({ "list/5", "list/4" }, keys_of(kvs))
      assert.is_true(kvs.more)
      assert.equal(5, kvs.count)
      kvs = assert(etcd:range("list/", { prefix = true, sort_target = "value", sort_order = "descend" }))
      assert.equal("vvvvv", kvs[1].value)
      kvs = assert(etcd:range("list/", { prefix = true, keys_only = true }))
      assert.equal("list/3", kvs[3].key)
      assert.equal("", kvs[3].value)
      kvs = assert(etcd:range("list/", { prefix = true, count_only = true }))
      assert.equal(0, #kvs)
      assert.equal(5, kvs.count)
      kvs = assert(etcd:range("list/2", { range_end = "list/4" }))
      assert.same({ "list/2", "list/3" }, keys_of(kvs))
    end)

    it("pages through a large range at the revision of the first page", function()
      for i = 1, 250 do assert(etcd:put(("page/%03d"):format(i), tostring(i))) end
      -- a write lands between every two pages; the pages must not see it
      local writes = 0
      local client = etcd_mod.new { endpoints = { server.endpoint } }
      function client._post(self, path, body, opts)
        local j, err = etcd_mod.Client._post(self, path, body, opts)
        if path == "/v3/kv/range" and writes < 10 then
          writes = writes + 1
          assert(etcd:put(("page/%03d"):format(300 + writes), "late"))
          assert(etcd:put("page/001", "changed"))
        end
        return j, err
      end
      local kvs, _, h = assert(client:range("page/", { prefix = true, page_size = 100 }))
      assert.equal(3, writes)
      assert.equal(250, #kvs)
      assert.equal(250, kvs.count)
      assert.equal("1", kvs[1].value)
      for i = 1, 250 do assert.equal(("page/%03d"):format(i), kvs[i].key) end
      assert.is_true(h.revision < etcd:get("page/001").mod_revision)
      assert.equal(253, #assert(etcd:range("page/", { prefix = true, page_size = 1000 })))
    end)

    it("deletes a key, a prefix and a range, returning the deleted kvs", function()
      for i = 1, 4 do assert(etcd:put("del/" .. i, "v" .. i)) end
      assert(etcd:put("del0", "stays"))
      local n, _, h, prev = etcd:delete("del/1", { prev_kv = true })
      assert.equal(1, n)
      assert.is_true(h.revision > 0)
      assert.equal("v1", prev[1].value)
      n = etcd:delete("del/2", { range_end = "del/4" })
      assert.equal(2, n)
      n, _, _, prev = etcd:delete("del/", { prefix = true, prev_kv = true })
      assert.equal(1, n)
      assert.same({ "del/4" }, keys_of(prev))
      assert.equal(0, etcd:delete("del/", { prefix = true }))
      assert.equal("stays", etcd:get("del0").value)
    end)

    it("stores every byte value, embedded NULs, in keys and values", function()
      local bytes = all_bytes()
      local key = "bin/\0key\0" .. bytes
      assert(etcd:put(key, bytes))
      local kv = etcd:get(key)
      assert.equal(key, kv.key)
      assert.equal(bytes, kv.value)
      assert(etcd:put("bin/empty", ""))
      assert.equal("", etcd:get("bin/empty").value)
    end)

    it("ranges over keys ending in 0xff", function()
      assert(etcd:put("ff/\xff", "1"))
      assert(etcd:put("ff/\xff\xff", "2"))
      assert(etcd:put("ff/\xff\0", "3"))
      assert(etcd:put("ff0", "outside"))
      assert(etcd:put("ff/\xfe", "before"))
      local kvs = assert(etcd:range("ff/\xff", { prefix = true }))
      assert.same({ "ff/\xff", "ff/\xff\0", "ff/\xff\xff" }, keys_of(kvs))
      kvs = assert(etcd:range("ff/\xff\xff", { prefix = true }))
      assert.same({ "ff/\xff\xff" }, keys_of(kvs))
      -- an all-0xff prefix reaches to the end of the keyspace
      assert(etcd:put("\xff\xffend", "last"))
      kvs = assert(etcd:range("\xff\xff", { prefix = true }))
      assert.same({ "\xff\xffend" }, keys_of(kvs))
      kvs = assert(etcd:range("ff/", { range_end = "\0" }))
      assert.equal("ff/\xfe", kvs[1].key)
      assert.equal("\xff\xffend", kvs[#kvs].key)
    end)

    it("stores a value near the 1.5 MiB request limit and refuses one above it", function()
      local big = ("0123456789abcdef"):rep(1536 * 1024 // 16 - 64)
      assert(etcd:put("big", big))
      assert.equal(big, etcd:get("big").value)
      local ok, err = etcd:put("big2", big .. ("x"):rep(2048))
      assert.is_nil(ok)
      assert.equal("invalid", err.kind)
      assert.matches("too large", err.message)
    end)

    it("runs transactions with compares on every target and nested txns", function()
      local _, _, h = assert(etcd:put("txn/a", "1"))
      local lease = assert(etcd:grant(60))
      assert(etcd:put("txn/l", "x", { lease = lease.id }))
      local res, _, th = etcd:txn {
        compare = {
          { key = "txn/a", value = "1" },
          { key = "txn/a", version = 1 },
          { key = "txn/a", create_revision = h.revision },
          { key = "txn/a", mod_revision = h.revision + 1, result = "<" },
          { key = "txn/a", version = 0, result = "greater" },
          { key = "txn/a", value = "2", result = "not_equal" },
          { key = "txn/l", lease = lease.id },
          { key = "txn/", prefix = true, version = 0, result = ">" },
        },
        success = {
          { put = "txn/b", value = "2", prev_kv = true },
          { get = "txn/", prefix = true },
          { delete = "txn/l", prev_kv = true },
          -- nested compares see the state before the transaction, like the outer ones
          { txn = { compare = { { key = "txn/b", version = 0 } }, success = { { put = "txn/c", value = "3" } } } },
        },
        failure = { { put = "txn/failed", value = "1" } },
      }
      assert.is_true(res.succeeded)
      assert.equal("integer", math.type(th.revision))
      local r = res.responses
      assert.equal("put", r[1].type)
      assert.is_nil(r[1].prev_kv)
      assert.equal("get", r[2].type)
      assert.same({ "txn/a", "txn/b", "txn/l" }, keys_of(r[2]))
      assert.equal("delete", r[3].type)
      assert.equal(1, r[3].deleted)
      assert.equal("x", r[3].prev_kvs[1].value)
      assert.equal("txn", r[4].type)
      assert.is_true(r[4].succeeded)
      assert.equal("3", etcd:get("txn/c").value)
      assert.is_nil(etcd:get("txn/failed"))

      res = assert(etcd:txn {
        compare = { { key = "txn/a", value = "nope" } },
        success = { { put = "txn/x", value = "1" } },
        failure = { { get = "txn/a" } },
      })
      assert.is_false(res.succeeded)
      assert.equal("1", res.responses[1][1].value)
      assert.is_nil(etcd:get("txn/x"))
      assert(etcd:revoke(lease.id))
    end)

    it("offers create, replace, update and delete_if", function()
      local ok, _, h = etcd:create("cond/a", "1")
      assert.is_true(ok)
      assert.is_true(h.revision > 0)
      local cur
      ok, _, _, cur = etcd:create("cond/a", "2")
      assert.is_false(ok)
      assert.equal("1", cur.value)
      ok, _, _, cur = etcd:replace("cond/a", "9", "2")
      assert.is_false(ok)
      assert.equal("1", cur.value)
      assert.is_true((etcd:replace("cond/a", "1", "2")))
      ok, _, _, cur = etcd:replace("cond/none", "1", "2")
      assert.is_false(ok)
      assert.is_nil(cur)
      local kv = etcd:get("cond/a")
      assert.is_true((etcd:update("cond/a", "3", kv.mod_revision)))
      ok, _, _, cur = etcd:update("cond/a", "4", kv.mod_revision)
      assert.is_false(ok)
      assert.equal("3", cur.value)
      assert.is_false((etcd:delete_if("cond/a", kv.mod_revision)))
      assert.is_true((etcd:delete_if("cond/a", cur.mod_revision)))
      assert.is_nil(etcd:get("cond/a"))
    end)

    it("reports compacted and future revisions as errors of their own kind", function()
      local _, _, h1 = assert(etcd:put("comp/a", "1"))
      local _, _, h2 = assert(etcd:put("comp/a", "2"))
      assert(etcd:compact(h2.revision, { physical = true }))
      local kv, err = etcd:get("comp/a", { revision = h1.revision })
      assert.is_nil(kv)
      assert.equal("compacted", err.kind)
      assert.equal(400, err.status)
      assert.equal(11, err.code)
      assert.matches("compacted", err.message)
      kv, err = etcd:range("comp/", { prefix = true, revision = h2.revision + 1000 })
      assert.is_nil(kv)
      assert.equal("invalid", err.kind)
      local _, cerr = etcd:compact(h1.revision)
      assert.equal("compacted", cerr.kind)
    end)

    it("works under a namespace prefix and strips it from results", function()
      local ns = etcd_mod.new { endpoints = { server.endpoint }, prefix = "ns1/" }
      assert.equal("ns1/", ns.prefix)
      assert.equal("", etcd.prefix)
      assert(ns:put("a", "1"))
      assert(ns:put("b/c", "2"))
      assert(etcd:put("ns10", "outside"))
      assert.equal("1", etcd:get("ns1/a").value)
      assert.equal("a", ns:get("a").key)
      local _, _, _, prev_a = ns:put("a", "1", { prev_kv = true }) -- (the same value: the rest reads "1")
      assert.same({ "a", "1" }, { prev_a.key, prev_a.value })
      assert.same({ "a", "b/c" }, keys_of(assert(ns:range("", { prefix = true }))))
      assert.same({ "a", "b/c" }, keys_of(assert(ns:range("a", { range_end = "\0" }))))
      assert.same({ "b/c" }, keys_of(assert(ns:range("b/", { prefix = true }))))
      local ok, _, _, cur = ns:create("a", "x")
      assert.is_false(ok)
      assert.equal("a", cur.key)
      local res = assert(ns:txn { compare = { { key = "a", value = "1" } }, success = { { get = "b/", prefix = true } } })
      assert.equal("b/c", res.responses[1][1].key)
      local _, _, _, prev = ns:delete("", { prefix = true, prev_kv = true })
      assert.same({ "a", "b/c" }, keys_of(prev))
      assert.equal("outside", etcd:get("ns10").value)
    end)

    it("interoperates with etcdctl both ways", function()
      assert(etcd:put("ctl/a", "from coord"))
      local ok, out = server:ctl("get --print-value-only ctl/a")
      assert.is_true(ok, out)
      assert.equal("from coord\n", out)
      ok, out = server:ctl("put ctl/b 'from etcdctl'")
      assert.is_true(ok, out)
      assert.equal("from etcdctl", etcd:get("ctl/b").value)
    end)

    it("raises on wrong argument types", function()
      assert.has_error(function() etcd:get(nil) end, "bad argument #1 to 'get' (string expected, got nil)")
      assert.has_error(function() etcd:put("k", 1) end)
      assert.has_error(function() etcd:get("k", "x") end)
      assert.has_error(function() etcd:range("k", { limit = 1.5 }) end)
      assert.has_error(function() etcd:range("k", { sort_order = "sideways" }) end)
      assert.has_error(function() etcd:delete(false) end)
      assert.has_error(function() etcd:txn { compare = { { key = "a" } } } end)
      assert.has_error(function() etcd:txn { success = { { frob = "a" } } } end)
      assert.has_error(function() etcd:create("a") end)
      assert.has_error(function() etcd:update("a", "b", "3") end)
      assert.has_error(function() etcd:compact("3") end)
      assert.has_error(function() etcd_mod.new { endpoints = 5 } end)
    end)
  end)
end
