-- examples/host.lua: the Lua side of examples/host.c, a C host with its own epoll loop. It
-- mirrors etcd's "host/config/" prefix; frame(n) is called by the host 50 times a second and
-- reads the live speed from the mirror, while an operator coroutine (run by the host's
-- coord.step calls) raises it. frame returns false to stop the host.
--   build/host examples/host.lua
local coord = require "coord"

local etcd = coord.etcd.new() -- endpoints from ETCDCTL_ENDPOINTS
local config = coord.mirror(etcd, "host/config/", { decode = tonumber })

coord.spawn(function()
  for speed = 1, 3 do
    assert(etcd:put("host/config/speed", tostring(speed)))
    assert(config:wait(function(m) return m:get("host/config/speed") == speed end, 5))
    coord.sleep(0.1)
  end
end)

local shown
return {
  frame = function(n)
    local speed = config:get("host/config/speed")
    if speed ~= shown then
      print(("frame %d: speed is now %s"):format(n, tostring(speed)))
      shown = speed
    end
    if speed == 3 then
      print(("the mirror applied %d changes"):format(config:status().changes))
      config:close()
      return false
    end
    return true
  end,
}
