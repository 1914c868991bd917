-- coord.consul txn, agent, health, catalog, status and event against a real Consul dev agent.
local coord = require "coord"
local consul_mod = require "coord.consul"
local servers = require "servers"

describe("coord.consul API", function()
  local server, c
  setup(function()
    server = servers.consul {}
    c = consul_mod.new { address = server.address }
  end)
  teardown(function() server:stop() end)

  describe("txn", function()
    it("applies KV operations together, base64 and uint64 flags included", function()
      local flags = math.mininteger + 0x2ddccbc0 -- above 2^63 as a uint64
      local res, err, meta = c.txn:run {
        { verb = "set", key = "txn/a", value = "\0\255bin", flags = flags },
        { verb = "set", key = "txn/b", value = "b" },
        { verb = "get", key = "txn/a" },
        { verb = "get-tree", key = "txn/" },
        { verb = "check-not-exists", key = "txn/none" },
      }
      assert.is_nil(err)
      assert.is_true(res.applied)
      assert.are.equal(200, meta.status)
      local results = res.results
      -- one result per set and get, one per entry of get-tree
      assert.are.equal(5, #results)
      assert.are.equal("\0\255bin", results[3].kv.value)
      assert.are.equal(flags, results[3].kv.flags)
      assert.are.equal("txn/a", results[4].kv.key)
      assert.are.equal("txn/b", results[5].kv.key)
      local e = c.kv:get("txn/a")
      assert.are.equal(flags, e.flags)
      res, err, meta = c.txn:run {
        { verb = "cas", key = "txn/b", value = "c", index = c.kv:get("txn/b").modify_index },
        { verb = "delete-cas", key = "txn/a", index = e.modify_index },
        { verb = "lock", key = "txn/l", value = "x", session = "00000000-0000-0000-0000-000000000000" },
      }
      -- rolled back: an answer (result, nil, meta), not a failure
      assert.is_nil(err)
      assert.is_false(res.applied)
      assert.is_nil(res.results)
      assert.are.equal(409, meta.status)
      assert.are.equal(3, res.errors[1].op)
      assert.is_string(res.errors[1].what)
      assert.are.equal("b", c.kv:get("txn/b").value, "rolled back")
      assert.are.equal(e.modify_index, c.kv:get("txn/a").modify_index)
      res = assert(c.txn:run {
        { verb = "delete", key = "txn/b" }, { verb = "delete-tree", key = "txn/" },
        { verb = "check-not-exists", key = "txn/a" },
      })
      assert.is_true(res.applied)
    end)

    it("refuses a transaction over the operation limit before sending it", function()
      local ops = {}
      for i = 1, 65 do ops[i] = { verb = "set", key = "txn/many/" .. i, value = "x" } end
      local ok, err = c.txn:run(ops)
      assert.is_nil(ok)
      assert.are.equal("limit", err.kind)
      assert.is_nil(err.status)
      assert.are.same({}, (c.kv:keys("txn/many/")))
      ops[65] = nil
      assert.is_true(c.txn:run(ops).applied)
      assert.are.equal(64, #c.kv:keys("txn/many/"))
    end)

    it("raises on a malformed operation", function()
      assert.has_error(function() c.txn:run { { verb = "frob", key = "x" } } end)
      assert.has_error(function() c.txn:run { { verb = "set" } } end)
    end)
  end)

  describe("agent and health", function()
    it("registers a service with a TTL check and drives it through pass, warn, fail, update", function()
      assert(c.agent:service_register { Name = "web", ID = "web1", Port = 8080, Tags = { "v1" },
        Check = { CheckID = "web1-ttl", TTL = "60s" } })
      assert.are.equal(8080, c.agent:services().web1.Port)
      assert.are.equal("web", c.agent:service("web1").Service)
      assert.is_nil((c.agent:service("nope")))
      assert.is_true((c.agent:pass_ttl("web1-ttl", "fine")))
      local all = assert(c.health:service("web", { passing = true }))
      assert.are.equal(1, #all)
      assert.are.equal("web1", all[1].Service.ID)
      assert.is_true((c.agent:warn_ttl("web1-ttl")))
      assert.are.equal("warning", c.agent:checks()["web1-ttl"].Status)
      assert.are.same({}, (c.health:service("web", { passing = true })))
      assert.is_true((c.agent:fail_ttl("web1-ttl", "down")))
      local crit = c.health:state("critical")
      assert.are.equal("web1-ttl", crit[1].CheckID)
      assert.are.equal("down", crit[1].Output)
      assert.is_true((c.agent:update_ttl("web1-ttl", "back", "passing")))
      local checks = c.health:checks("web")
      assert.are.equal("passing", checks[1].Status)
      assert.are.equal("back", checks[1].Output)
      assert.has_error(function() c.agent:update_ttl("web1-ttl", "x", "great") end)
      local filtered = c.health:service("web", { filter = 'Service.Port == 9999' })
      assert.are.same({}, filtered)
      assert.is_true((c.agent:service_deregister("web1")))
      assert.is_nil(c.agent:services().web1)
    end)

    it("registers and deregisters a check, and reads node health, members and self", function()
      assert(c.agent:check_register { Name = "disk", ID = "disk", TTL = "30s" })
      local node = c.health:node("coord-test")
      local names = {}
      for _, ch in ipairs(node) do names[ch.CheckID] = ch.Status end
      assert.are.equal("critical", names.disk)
      assert.are.equal("passing", names.serfHealth)
      assert.is_true((c.agent:check_deregister("disk")))
      assert.is_nil(c.agent:checks().disk)
      assert.are.equal("coord-test", c.agent:members()[1].Name)
      assert.are.equal("coord-test", c.agent:self().Config.NodeName)
    end)

    it("blocks on the content hash of an agent service until it changes", function()
      assert(c.agent:service_register { Name = "hashy", ID = "hashy", Port = 1 })
      local svc, _, meta = c.agent:service("hashy")
      assert.is_string(meta.content_hash)
      local t0 = coord.now()
      local _, _, same = c.agent:service("hashy", { hash = meta.content_hash, wait = 0.5 })
      assert.is_true(coord.now() - t0 >= 0.4)
      assert.are.equal(meta.content_hash, same.content_hash)
      local seen = coord.run(function()
        local seen = {}
        local w <close> = c:watch(function(o) return c.agent:service("hashy", o) end)
        for s in w do
          seen[#seen + 1] = s.Port
          if s.Port == 1 then assert(c.agent:service_register { Name = "hashy", ID = "hashy", Port = 2 }) end
          if s.Port == 2 then break end
        end
        return seen
      end)
      assert.are.same({ 1, 2 }, seen)
      assert.are.equal(1, svc.Port)
      assert(c.agent:service_deregister("hashy"))
    end)
  end)

  describe("catalog", function()
    it("registers and deregisters an external node and service, and reads them back", function()
      assert(c.catalog:register { Node = "ext", Address = "10.0.0.9",
        Service = { ID = "db1", Service = "db", Port = 5432, Tags = { "primary" } } })
      assert.is_truthy(c.catalog:services().db)
      local inst = c.catalog:service("db", { tag = "primary" })
      assert.are.equal("ext", inst[1].Node)
      assert.are.equal(5432, inst[1].ServicePort)
      local node = c.catalog:node("ext")
      assert.are.equal("10.0.0.9", node.Node.Address)
      assert.is_truthy(node.Services.db1)
      assert.is_nil((c.catalog:node("nope")))
      local nodes = c.catalog:nodes()
      assert.are.equal(2, #nodes)
      assert.are.equal(1, #c.catalog:nodes { filter = 'Node == "ext"' })
      assert.are.same({ "dc1" }, (c.catalog:datacenters()))
      assert(c.catalog:deregister { Node = "ext", ServiceID = "db1" })
      assert.is_nil(c.catalog:services().db)
      assert(c.catalog:deregister { Node = "ext" })
      assert.are.equal(1, #c.catalog:nodes())
    end)

    it("blocks on the catalog index until a service appears", function()
      local _, _, meta = c.catalog:services()
      local got = coord.run(function()
        local waiter = coord.spawn(function()
          return c.catalog:services { index = meta.index, wait = 10 }
        end)
        assert(c.catalog:register { Node = "ext2", Address = "10.0.0.8", Service = { Service = "late" } })
        local ok, services, _, m = waiter:join()
        assert.is_true(ok)
        assert.is_true(m.index > meta.index)
        return services
      end)
      assert.is_truthy(got.late)
      assert(c.catalog:deregister { Node = "ext2" })
    end)
  end)

  describe("status and event", function()
    it("reads the leader and the peers", function()
      local leader = c.status:leader()
      assert.matches("^127%.0%.0%.1:%d+$", leader)
      assert.are.same({ leader }, (c.status:peers()))
    end)

    it("fires events with binary payloads and lists them, blocking on the opaque index", function()
      local e = assert(c.event:fire("deploy", "\0\1\2", {}))
      assert.are.equal("deploy", e.Name)
      assert.are.equal("\0\1\2", e.Payload)
      local list, _, meta = c.event:list { name = "deploy" }
      assert.are.equal(e.ID, list[#list].ID)
      assert.are.equal("\0\1\2", list[#list].Payload)
      local got = coord.run(function()
        local waiter = coord.spawn(function() return c.event:list { name = "deploy", index = meta.index, wait = 10 } end)
        assert(c.event:fire("deploy", "second"))
        local _, l = waiter:join()
        return l
      end)
      assert.are.equal("second", got[#got].Payload)
      assert.are.same({}, (c.event:list { name = "nothing-fired" }))
    end)
  end)
end)
