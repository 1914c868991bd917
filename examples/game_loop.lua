-- examples/game_loop.lua: a game-style main loop that owns its frames. coord never takes
-- over: the loop calls coord.step() once per frame, and reads live settings from a mirror
-- of Consul's "game/settings/" prefix while an operator coroutine changes them.
local coord = require "coord"

local consul = coord.consul.new() -- CONSUL_HTTP_ADDR, or 127.0.0.1:8500
assert(consul.kv:put("game/settings/speed", "1")) -- outside a coroutine: waits for the reply

local settings <close> = coord.mirror(consul, "game/settings/", { decode = tonumber })

-- the "operator": raises the speed three times while the game runs
coord.spawn(function()
  assert(settings:wait("game/settings/speed", 5))
  for speed = 2, 4 do
    coord.sleep(0.25)
    assert(consul.kv:put("game/settings/speed", tostring(speed)))
  end
end)

local frame, x, shown = 0, 0.0, nil
local dt = 1 / 60
while frame < 600 do            -- at most 10 s of frames
  coord.step(dt)                -- runs what is ready; waits at most one frame for I/O
  frame = frame + 1
  local speed = settings:get("game/settings/speed") or 1
  x = x + speed * dt
  if speed ~= shown then
    print(("frame %3d: speed is now %d (x = %.2f)"):format(frame, speed, x))
    shown = speed
  end
  if speed == 4 then break end
end
print(("stopped after %d frames; the mirror applied %d changes"):format(frame, settings:status().changes))
