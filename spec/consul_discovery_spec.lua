-- consul:services_watch against a real Consul dev agent, reached through the fault peer in
-- proxy mode so that the blocking queries it sends can be counted.
local coord = require "coord"
local consul_mod = require "coord.consul"
local servers = require "servers"
local helpers = require "helpers"

-- The ids of a list of instances, sorted.
local function ids(list)
  local out = {}
  for i, x in ipairs(list) do out[i] = x.id end
  table.sort(out)
  return out
end

describe("consul:services_watch", function()
  local server, peer, c
  setup(function()
    server = servers.consul()
    server:wait_node()
    peer = helpers.start_peer { upstream = server.port }
    c = consul_mod.new { address = "127.0.0.1:" .. peer.port }
  end)
  teardown(function()
    peer.stop()
    server:stop()
  end)

  -- Registers instance id of service name with a passing TTL check "<id>-ttl".
  local function register(name, id, port, tags)
    assert(c.agent:service_register {
      Name = name, ID = id, Port = port, Address = "10.0.0." .. port % 250, Tags = tags, Meta = { zone = "z" .. port },
      Check = { CheckID = id .. "-ttl", TTL = "300s", Status = "passing" },
    })
  end

  -- Reads w until check(list) holds; returns that list and its meta. Bounded in count and time.
  local function until_list(w, check)
    for _ = 1, 20 do
      local list, err, meta = coord.timeout(20, w.next, w)
      assert.is_nil(err)
      assert(list, "the watch ended: " .. tostring(w.error))
      if check(list) then return list, meta end
    end
    error("the watch never delivered the expected list")
  end

  it("delivers the healthy instances, then the list without one whose check failed", function()
    register("web", "web1", 8001, { "blue" })
    register("web", "web2", 8002, { "green" })
    coord.run(function()
      local w <close> = c:services_watch("web", { passing = true })
      local first, err, meta = coord.timeout(20, w.next, w)
      assert.is_nil(err)
      assert.are.same({ "web1", "web2" }, ids(first))
      assert.are.equal("consul.meta", getmetatable(meta).__name)
      assert.are.equal("integer", math.type(meta.index))
      local one
      for _, x in ipairs(first) do if x.id == "web1" then one = x end end
      assert.are.same({
        id = "web1", service = "web", address = "10.0.0.1", port = 8001, tags = { "blue" }, meta = { zone = "z8001" },
        node = "coord-test", node_address = "127.0.0.1", datacenter = "dc1", status = "passing",
      }, one)
      assert(c.agent:fail_ttl("web1-ttl", "down"))
      local after = until_list(w, function(l) return #l ~= 2 end)
      assert.are.same({ "web2" }, ids(after))
      assert(c.agent:pass_ttl("web1-ttl"))
      assert.are.same({ "web1", "web2" }, ids(until_list(w, function(l) return #l == 2 end)))
    end)
    assert.is_nil(next(c._shared), "the query stops when its watch is closed")
  end)

  it("shows failing instances without passing = true, with their status; filters by tag", function()
    register("api", "api1", 8011)
    register("api", "api2", 8012)
    assert(c.agent:fail_ttl("api2-ttl"))
    coord.run(function()
      local w <close> = c:services_watch("api")
      local list = until_list(w, function(l) return #l == 2 end)
      local status = {}
      for _, x in ipairs(list) do status[x.id] = x.status end
      assert.are.same({ api1 = "passing", api2 = "critical" }, status)
      register("tg", "tg1", 8031, { "green" })
      register("tg", "tg2", 8032, { "blue" })
      local tagged <close> = c:services_watch("tg", { tag = "green" })
      assert.are.same({ "tg1" }, ids(until_list(tagged, function() return true end)))
    end)
  end)

  it("runs one blocking query for identical watches, another for other options", function()
    register("db", "db1", 8021)
    register("db", "db2", 8022)
    local path = "/v1/health/service/db"
    local before = peer.count(path)
    local counted, requests, groups = coord.run(function()
      local w1 <close> = c:services_watch("db", { passing = true })
      local w2 <close> = c:services_watch("db", { passing = true })
      assert.are.same({ "db1", "db2" }, ids(until_list(w1, function() return true end)))
      assert.are.same({ "db1", "db2" }, ids(until_list(w2, function() return true end)))
      local groups = 0
      for _ in pairs(c._shared) do groups = groups + 1 end
      assert(c.agent:fail_ttl("db1-ttl"))
      until_list(w1, function(l) return #l == 1 end)
      until_list(w2, function(l) return #l == 1 end)
      -- the shared query is now blocked in its next round: every request it sent has arrived
      servers.until_true("the next round of the shared query", function()
        return peer.count(path) - before == w1:requests()
      end, 10)
      local counted = peer.count(path) - before
      local other <close> = c:services_watch("db")
      assert.are.same({ "db1", "db2" }, ids(until_list(other, function() return true end)))
      local g2 = 0
      for _ in pairs(c._shared) do g2 = g2 + 1 end
      assert.are.equal(2, g2, "different options, different query")
      return counted, { w1:requests(), w2:requests() }, groups
    end)
    assert.are.equal(1, groups)
    assert.are.equal(requests[1], requests[2], "both watches ride the same poller")
    assert.are.equal(requests[1], counted)
    assert.is_true(counted >= 2, "the first read and at least one blocking round, got " .. counted)
    assert.is_nil(next(c._shared))
  end)

  it("raises on bad arguments", function()
    assert.has_error(function() c:services_watch(5) end, "bad argument #1 to 'services_watch' (string expected, got number)")
    assert.has_error(function() c:services_watch("web", { passing = "yes" }) end,
      "bad option 'passing' to 'services_watch' (boolean expected, got string)")
    assert.has_error(function() c:services_watch("web", { rate = -1 }) end,
      "bad option 'rate' to 'services_watch' (positive number expected, got -1)")
    assert.has_error(function() c:services_watch("web", { dc = 5 }) end,
      "bad option 'dc' to 'services_watch' (string expected, got integer)")
    assert.has_error(function() c:services_watch("..") end)
  end)
end)
