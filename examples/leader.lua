-- examples/leader.lua: leader election among three coroutines, on etcd and on Consul. Each
-- candidate campaigns; the leader works for a moment and then stops (resigns), and one of
-- the others takes over, until all three have led.
local coord = require "coord"

local etcd = coord.etcd.new()
local consul = coord.consul.new()

-- The same three candidates on either backend: `campaign` waits until this candidate leads
-- and returns a function that stops leading.
local backends = {
  { name = "etcd", campaign = function(who)
      local lead = assert(etcd:campaign("examples/leader", who, { ttl = 5 }))
      return function() assert(etcd:resign(lead)) end
    end },
  { name = "consul", campaign = function(who)
      local election = consul:election("examples/leader")
      assert(election:campaign(who))
      return function() assert(election:resign()) end
    end },
}

coord.run(function()
  for _, b in ipairs(backends) do
    print(("%s: three candidates campaign"):format(b.name))
    local order = {}
    local tasks = {}
    for _, who in ipairs { "alpha", "beta", "gamma" } do
      tasks[#tasks + 1] = coord.spawn(function()
        local resign = b.campaign(who)
        order[#order + 1] = who
        print(("  %-6s leads (leader #%d)"):format(who, #order))
        coord.sleep(0.3)      -- the leader's work
        print(("  %-6s stops"):format(who))
        resign()
      end)
    end
    for _, t in ipairs(tasks) do assert(t:join()) end
    print(("%s: %d leaders in turn, never two at once\n"):format(b.name, #order))
  end
end)
