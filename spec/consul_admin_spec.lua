-- coord.consul prepared queries, maintenance mode, the event watch, coordinates and operator
-- calls against a real Consul 1.8.7 dev agent (and a second datacenter joined over the WAN,
-- for query failover).
local coord = require "coord"
local consul_mod = require "coord.consul"
local servers = require "servers"

-- Each read of a watch is bounded: a watch that misses an event fails the test, it does not hang.
local function next_of(w)
  local e, err, meta = coord.timeout(30, function() return w:next() end)
  assert.is_nil(err)
  return e, meta
end

local function find(list, field, value)
  for _, x in ipairs(list or {}) do
    if x[field] == value then return x end
  end
  return nil
end

describe("coord.consul admin calls", function()
  local server, c
  setup(function()
    server = servers.consul {}
    server:wait_node()
    c = consul_mod.new { address = server.address }
  end)
  teardown(function() server:stop() end)

  describe("prepared queries", function()
    it("are created, listed, read, changed and deleted; an unknown one is absent or not_found", function()
      local id, err, meta = c.query:create { Name = "crud-q", Service = { Service = "web" } }
      assert.is_nil(err)
      assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", id)
      assert.matches("^consul.meta{", tostring(meta))
      local list = assert(c.query:list())
      assert.are.equal("crud-q", find(list, "ID", id).Name)
      local q
      q, err = c.query:get(id)
      assert.is_nil(err)
      assert.are.equal(id, q.ID)
      assert.is_false(q.Service.OnlyPassing)
      local ok
      ok, err, meta = c.query:update(id, { Name = "crud-q", Service = { Service = "web", OnlyPassing = true } })
      assert.is_true(ok)
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.is_true(c.query:get(id).Service.OnlyPassing)

      local none = "00000000-0000-0000-0000-000000000000"
      local n = table.pack(c.query:get(none))
      assert.are.equal(3, n.n)
      assert.is_nil(n[1])
      assert.is_nil(n[2])
      assert.are.equal(404, n[3].status)
      ok, err = c.query:update(none, { Name = "x", Service = { Service = "web" } })
      assert.is_nil(ok)
      assert.are.equal("not_found", err.kind)

      assert.is_true((c.query:delete(id)))
      n = table.pack(c.query:get(id))
      assert.is_nil(n[1])
      assert.is_nil(n[2])
      ok, err = c.query:delete(id)
      assert.is_nil(ok)
      assert.are.equal("not_found", err.kind)
      assert.matches("non%-existent", tostring(err))
    end)

    it("raises on bad arguments before sending anything", function()
      assert.has_error(function() c.query:create("x") end, "bad argument #1 to 'create' (table expected, got string)")
      assert.has_error(function() c.query:get("not-a-uuid") end)
      assert.has_error(function() c.query:update("00000000-0000-0000-0000-000000000000", nil) end)
      assert.has_error(function() c.query:execute("") end)
      assert.has_error(function() c.query:execute("q", { limit = 1.5 }) end,
        "bad option 'limit' to 'execute' (integer expected, got float)")
      assert.has_error(function() c.query.list() end, "calling 'list' on bad self (use ':')")
    end)

    it("executes by ID and by name, with limit and near; explains; an unknown query is absent", function()
      for i = 1, 3 do
        assert(c.agent:service_register { Name = "exec-svc", ID = "exec-svc" .. i, Port = 9000 + i })
      end
      local id = assert(c.query:create { Name = "exec-q", Service = { Service = "exec-svc" } })
      local r, err, meta
      servers.until_true("three instances in the catalog", function()
        r, err, meta = c.query:execute(id)
        return r ~= nil and #r.Nodes == 3
      end)
      assert.is_nil(err)
      assert.are.equal("exec-svc", r.Service)
      assert.are.equal("dc1", r.Datacenter)
      assert.are.equal("dc1", meta.datacenter)
      assert.are.equal(0, meta.failovers)
      assert.are.equal("integer", math.type(meta.failovers))
      r = assert(c.query:execute("exec-q", { limit = 1, near = "_agent" }))
      assert.are.equal(1, #r.Nodes)
      assert.matches("^exec%-svc%d$", r.Nodes[1].Service.ID)

      -- an instance in maintenance leaves the healthy answer
      assert.is_true((c.agent:service_maintenance("exec-svc1", true, "drain")))
      servers.until_true("exec-svc1 out of the query's answer", function()
        r = c.query:execute("exec-q")
        return r ~= nil and #r.Nodes == 2
      end)
      for _, node in ipairs(r.Nodes) do assert.are_not.equal("exec-svc1", node.Service.ID) end
      assert.is_true((c.agent:service_maintenance("exec-svc1", false)))

      local q = assert(c.query:explain("exec-q"))
      assert.are.equal(id, q.ID)
      assert.are.equal("exec-svc", q.Service.Service)

      for _, name in ipairs { "no-such-query", "a/b", "..x", "00000000-0000-0000-0000-000000000000" } do
        local n = table.pack(c.query:execute(name))
        assert.are.equal(3, n.n, name)
        assert.is_nil(n[1], name)
        assert.is_nil(n[2], name)
        assert.are.equal(404, n[3].status, name)
        n = table.pack(c.query:explain(name))
        assert.is_nil(n[1], name)
        assert.is_nil(n[2], name)
      end
      assert(c.query:delete(id))
    end)

    it("executes through the agent cache", function()
      local id = assert(c.query:create { Name = "cached-q", Service = { Service = "exec-svc" } })
      local _, err, meta = c.query:execute(id, { cached = true })
      assert.is_nil(err)
      assert.are.equal("MISS", meta.cache)
      _, err, meta = c.query:execute(id, { cached = true, max_age = 60 })
      assert.is_nil(err)
      assert.are.equal("HIT", meta.cache)
      assert(c.query:delete(id))
    end)

    describe("with a second datacenter", function()
      local dc2, c2
      setup(function()
        dc2 = servers.consul { args = "-datacenter dc2 -retry-join-wan 127.0.0.1:" .. server.serf_wan }
        c2 = consul_mod.new { address = dc2.address }
      end)
      teardown(function() dc2:stop() end)

      it("answers autopilot health with a report, the unhealthy 429 included, until healthy", function()
        local seen, report, err, meta = {}, nil, nil, nil
        servers.until_true("dc2 autopilot healthy", function()
          report, err, meta = c2.operator:autopilot_health()
          assert.is_nil(err)
          assert.is_boolean(report.Healthy)
          seen[meta.status] = true
          if meta.status == 429 then assert.is_false(report.Healthy) end
          return report.Healthy
        end, 60)
        assert.are.equal(200, meta.status)
        assert.are.equal(0, report.FailureTolerance)
        assert.are.equal("coord-test", report.Servers[1].Name)
        assert.is_true(report.Servers[1].Leader)
      end)

      it("fails over to it and says so in the meta", function()
        servers.until_true("dc2 in the WAN", function()
          local dcs = c.catalog:datacenters()
          return dcs ~= nil and #dcs == 2
        end, 60)
        dc2:wait_node()
        assert(c2.agent:service_register { Name = "far-svc", ID = "far1", Port = 7000 })
        local id = assert(c.query:create { Name = "far-q",
          Service = { Service = "far-svc", Failover = { Datacenters = { "dc2" } } } })
        local r, err, meta
        servers.until_true("far-svc in dc2's catalog", function()
          r, err, meta = c.query:execute("far-q")
          return r ~= nil and #r.Nodes == 1
        end)
        assert.is_nil(err)
        assert.are.equal(id, (c.query:get(id)).ID)
        assert.are.equal("dc2", r.Datacenter)
        assert.are.equal("dc2", meta.datacenter)
        assert.are.equal(1, meta.failovers)
        assert.are.equal("far1", r.Nodes[1].Service.ID)
        -- the same query run in dc2 itself does not exist there
        local n = table.pack(c.query:execute("far-q", { dc = "dc2" }))
        assert.is_nil(n[1])
        assert.is_nil(n[2])
        assert(c.query:delete(id))
      end)
    end)
  end)

  describe("maintenance", function()
    local function check_of(list, id)
      return find(list, "CheckID", id)
    end

    it("puts the node in maintenance with a reason and takes it out", function()
      local reason = "kernel & reboot, 100% sure"
      local ok, err, meta = c.agent:maintenance(true, reason)
      assert.is_true(ok)
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      local check
      servers.until_true("_node_maintenance in health", function()
        check = check_of(c.health:node("coord-test"), "_node_maintenance")
        return check ~= nil
      end)
      assert.are.equal("critical", check.Status)
      assert.are.equal(reason, check.Notes)
      assert.is_true((c.agent:maintenance(false)))
      servers.until_true("_node_maintenance gone", function()
        local checks = c.health:node("coord-test")
        return checks ~= nil and check_of(checks, "serfHealth") ~= nil and check_of(checks, "_node_maintenance") == nil
      end)
    end)

    it("puts one service in maintenance and takes it out; an unknown service is not_found", function()
      assert(c.agent:service_register { Name = "maint-svc", ID = "maint1", Port = 8001 })
      assert.is_true((c.agent:service_maintenance("maint1", true, "draining")))
      local check
      servers.until_true("_service_maintenance:maint1 in health", function()
        check = check_of(c.health:checks("maint-svc"), "_service_maintenance:maint1")
        return check ~= nil
      end)
      assert.are.equal("critical", check.Status)
      assert.are.equal("draining", check.Notes)
      assert.are.same({}, (c.health:service("maint-svc", { passing = true })))
      assert.is_true((c.agent:service_maintenance("maint1", false, nil)))
      servers.until_true("_service_maintenance:maint1 gone", function()
        local checks = c.health:checks("maint-svc")
        return checks ~= nil and check_of(checks, "_service_maintenance:maint1") == nil
      end)
      assert.are.equal(1, #c.health:service("maint-svc", { passing = true }))

      local ok, err = c.agent:service_maintenance("no-such-service", true)
      assert.is_nil(ok)
      assert.are.equal("not_found", err.kind)
      assert.are.equal(404, err.status)
    end)

    it("raises on bad arguments", function()
      assert.has_error(function() c.agent:maintenance("yes") end,
        "bad argument #1 to 'maintenance' (boolean expected, got string)")
      assert.has_error(function() c.agent:maintenance(true, 5) end,
        "bad argument #2 to 'maintenance' (string or nil expected, got integer)")
      assert.has_error(function() c.agent:service_maintenance("x") end,
        "bad argument #2 to 'service_maintenance' (boolean expected, got nil)")
      assert.has_error(function() c.agent:service_maintenance("..", true) end)
    end)
  end)

  describe("event:watch", function()
    it("delivers each event once, in LTime order, and a later watch only newer ones", function()
      local w = c.event:watch("spec-ev")
      for i = 1, 3 do assert(c.event:fire("spec-ev", "p" .. i)) end
      assert(c.event:fire("other-ev", "not mine"))
      local got, last = {}, -1
      for i = 1, 3 do
        local e, meta = next_of(w)
        assert.matches("^consul.meta{", tostring(meta))
        assert.are.equal("spec-ev", e.Name)
        assert.is_true(e.LTime > last)
        last = e.LTime
        got[i] = e.Payload
      end
      assert.are.same({ "p1", "p2", "p3" }, got)
      for i = 4, 5 do assert(c.event:fire("spec-ev", "p" .. i)) end
      assert.are.equal("p4", next_of(w).Payload)
      assert.are.equal("p5", next_of(w).Payload)
      -- nothing repeats: the next event delivered is the next one fired
      assert(c.event:fire("spec-ev", "p6"))
      assert.are.equal("p6", next_of(w).Payload)

      local later = c.event:watch("spec-ev")
      assert(c.event:fire("spec-ev", "q1"))
      assert.are.equal("q1", next_of(later).Payload)
      assert.are.equal("q1", next_of(w).Payload)
      later:close()
      w:close()
      assert.is_nil(w:next())

      local all = c.event:watch("spec-ev", { from = "all" })
      got = {}
      for i = 1, 7 do got[i] = next_of(all).Payload end
      assert.are.same({ "p1", "p2", "p3", "p4", "p5", "p6", "q1" }, got)
      assert.is_true(all:requests() >= 1)
      all:close()
    end)

    it("watches every event with no name, and is closed by leaving a for loop", function()
      local w
      local function watch(...)
        local a, b, cl, d = c.event:watch(...)
        w = a
        return a, b, cl, d
      end
      local seen = {}
      local ok, err = coord.timeout(30, function()
        assert(c.event:fire("loop-a"))
        assert(c.event:fire("loop-b"))
        for e in watch(nil, { from = "all" }) do
          seen[e.Name] = true
          if seen["loop-a"] and seen["loop-b"] then break end
        end
        return true
      end)
      assert.is_nil(err)
      assert.is_true(ok)
      assert.is_true(w.closed)
      assert.is_nil(w:next())
    end)

    it("raises on bad arguments and reports a failed first read as its first value", function()
      assert.has_error(function() c.event:watch(5) end, "bad argument #1 to 'watch' (string or nil expected, got integer)")
      assert.has_error(function() c.event:watch("x", { from = "yesterday" }) end,
        "bad option 'from' to 'watch' (\"now\" or \"all\" expected, got \"yesterday\")")
      local dead = consul_mod.new { address = "127.0.0.1:1", timeout = 2 }
      local w = dead.event:watch("x", { retry = false })
      local e, err = w:next()
      assert.is_nil(e)
      assert.are.equal("connect", err.kind)
      assert.are.equal(err, w.error)
    end)
  end)

  describe("coordinates", function()
    it("reads the servers' WAN coordinates by datacenter", function()
      local dcs, err, meta = c.coordinate:datacenters()
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      local dc1 = find(dcs, "Datacenter", "dc1")
      local mine = find(dc1.Coordinates, "Node", "coord-test")
      assert.are.equal(8, #mine.Coord.Vec)
      assert.is_number(mine.Coord.Height)
    end)

    it("sets a node's LAN coordinate and reads it back by node and in the list", function()
      assert(c.catalog:register { Node = "coord-far", Address = "127.0.0.2" })
      local vec = { 0.25, -0.5, 0, 0, 0, 0, 0, 0.125 }
      local ok, err = c.coordinate:update { Node = "coord-far",
        Coord = { Vec = vec, Error = 0.5, Adjustment = 0.001, Height = 0.0002 } }
      assert.is_true(ok)
      assert.is_nil(err)
      local coords
      servers.until_true("coord-far's coordinate applied", function()
        coords, err = c.coordinate:node("coord-far")
        assert.is_nil(err)
        return coords ~= nil
      end)
      assert.are.equal("coord-far", coords[1].Node)
      assert.are.same(vec, coords[1].Coord.Vec)
      assert.are.equal(0.0002, coords[1].Coord.Height)
      local nodes, meta = nil, nil
      nodes, err, meta = c.coordinate:nodes()
      assert.is_nil(err)
      assert.are.equal("integer", math.type(meta.index))
      assert.are.same(vec, find(nodes, "Node", "coord-far").Coord.Vec)

      local n = table.pack(c.coordinate:node("nobody"))
      assert.are.equal(3, n.n)
      assert.is_nil(n[1])
      assert.is_nil(n[2])
      assert.are.equal(404, n[3].status)
      assert.has_error(function() c.coordinate:update(nil) end)
      assert.has_error(function() c.coordinate:nodes { segment = 1 } end)
    end)
  end)

  describe("operator", function()
    it("lists the Raft peers", function()
      local cfg, err, meta = c.operator:raft_peers()
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.are.equal(1, #cfg.Servers)
      local s = cfg.Servers[1]
      assert.are.equal("coord-test", s.Node)
      assert.are.equal("127.0.0.1:" .. server.server_port, s.Address)
      assert.is_true(s.Leader)
      assert.is_true(s.Voter)
      assert.are.equal("integer", math.type(cfg.Index))
      assert.are.same(cfg, (c.operator:raft_peers { stale = true }))
    end)

    it("reports autopilot health on a settled agent", function()
      local report, err, meta
      servers.until_true("autopilot healthy", function()
        report, err, meta = c.operator:autopilot_health()
        assert.is_nil(err)
        return report.Healthy
      end)
      assert.are.equal(200, meta.status)
      assert.are.equal("coord-test", report.Servers[1].Name)
      assert.is_true(report.Servers[1].Healthy)
    end)
  end)
end)
