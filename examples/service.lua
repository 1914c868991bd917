-- examples/service.lua: a service that registers itself in Consul with a TTL health check,
-- keeps the check passing while it runs, and deregisters when it exits (even on error).
local coord = require "coord"

local consul = coord.consul.new()
local ID = "demo-web-1"

coord.run(function()
  assert(consul.agent:service_register {
    Name = "demo-web", ID = ID, Port = 8080, Tags = { "example" },
    Check = { CheckID = ID .. "-ttl", TTL = "3s", DeregisterCriticalServiceAfter = "1m" },
  })
  print("registered " .. ID .. " with a 3 s TTL check")

  -- deregister however this block is left
  local registration <close> = setmetatable({}, { __close = function()
    assert(consul.agent:service_deregister(ID))
    print("deregistered " .. ID)
  end })

  -- the heartbeat: pass the check at a third of its TTL
  local heartbeat = coord.spawn(function()
    while true do
      assert(consul.agent:pass_ttl(ID .. "-ttl", "serving"))
      coord.sleep(1)
    end
  end)

  -- the "work": until Consul reports the instance passing, then a little longer
  local index
  for _ = 1, 20 do
    local nodes, _, meta = assert(consul.health:service("demo-web", { passing = true, index = index, wait = 2 }))
    index = meta.index
    if #nodes > 0 then
      print(("health: %d passing instance(s) of demo-web"):format(#nodes))
      break
    end
  end
  coord.sleep(1.5)
  heartbeat:cancel()
end)

local nodes = assert(consul.health:service("demo-web"))
print(("after exit: %d instance(s) of demo-web registered"):format(#nodes))
