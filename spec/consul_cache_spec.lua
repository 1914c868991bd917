-- spec/consul_cache_spec.lua: the Consul agent cache through coord.consul (cached, max_age,
-- stale_if_error; meta.cache and meta.age), against a real dev agent.
local consul_mod = require "coord.consul"
local servers = require "servers"

describe("coord.consul agent cache", function()
  local server, c
  setup(function()
    server = servers.consul {}
    c = consul_mod.new { address = server.address }
    -- the dev agent registers its own "consul" service shortly after it elects itself
    servers.until_true("the consul service", function()
      local list = c.health:service("consul")
      return list ~= nil and #list == 1
    end, 30)
  end)
  teardown(function() server:stop() end)

  it("reads health:service through the cache: a MISS, then a HIT with its age", function()
    local plain, _, pmeta = assert(c.health:service("consul"))
    assert.equal(1, #plain)
    assert.is_nil(pmeta.cache)
    assert.is_nil(pmeta.age)
    local first, _, m1 = assert(c.health:service("consul", { cached = true }))
    assert.equal("MISS", m1.cache)
    -- (the service entries; the node's Meta may gain fields meanwhile: the agent adds some
    -- after it starts)
    assert.equal(#plain, #first)
    assert.same(plain[1].Service, first[1].Service)
    assert.equal(plain[1].Node.ID, first[1].Node.ID)
    local second, _, m2 = assert(c.health:service("consul", { cached = true }))
    assert.equal("HIT", m2.cache)
    assert.equal("integer", math.type(m2.age))
    assert.is_true(m2.age >= 0)
    assert.same(first, second)
    assert.equal(m1.index, m2.index)
  end)

  it("caches the catalog's services, service and datacenters too", function()
    for _, read in ipairs {
      function(o) return c.catalog:services(o) end,
      function(o) return c.catalog:service("consul", o) end,
      function(o) return c.catalog:datacenters(o) end,
    } do
      local _, _, m1 = assert(read { cached = true })
      local _, _, m2 = assert(read { cached = true })
      assert.equal("MISS", m1.cache)
      assert.equal("HIT", m2.cache)
    end
  end)

  it("sends max_age and stale_if_error as Cache-Control", function()
    -- catalog:datacenters is a simple cache: max-age=0 makes every read fetch again
    local _, _, m = assert(c.catalog:datacenters { cached = true, max_age = 0 })
    _, _, m = assert(c.catalog:datacenters { cached = true, max_age = 0, stale_if_error = 60 })
    assert.equal("MISS", m.cache)
    _, _, m = assert(c.catalog:datacenters { cached = true, max_age = 3600, stale_if_error = 60 })
    assert.equal("HIT", m.cache)
  end)

  it("checks the cache options", function()
    assert.has_error(function() c.health:service("consul", { max_age = 5 }) end,
      "bad option 'max_age' (needs cached = true)")
    assert.has_error(function() c.health:service("consul", { cached = true, stale_if_error = -1 }) end,
      "bad option 'stale_if_error' (seconds, 0 or more, expected)")
    assert.has_error(function() c.health:service("consul", { cached = "yes" }) end,
      "bad option 'cached' (boolean expected, got string)")
    assert.has_error(function() c.catalog:services { cached = true, max_age = "1" } end,
      "bad option 'max_age' (number expected, got string)")
  end)
end)
