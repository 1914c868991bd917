-- examples/luv.lua: coord inside a luv program (Debian's lua-luv). luv's loop runs the
-- program: a TCP server answering "GET key" from a mirror of Consul's "luv/config/" prefix
-- and a timer doing the program's own work. coord is a guest: a uv poll handle on coord.fd()
-- and a uv timer set to coord's next deadline both call coord.step(0).
local uv = require "luv"
local coord = require "coord"

local consul = coord.consul.new() -- address from CONSUL_HTTP_ADDR
local config <close> = coord.mirror(consul, "luv/config/")

-- the recipe: step coord when its fd is readable, and when its next timer is due
local poll, timer = uv.new_poll((coord.fd())), uv.new_timer()
local function pump()
  coord.step(0)
  local _, t = coord.fd() -- seconds until coord must run again (nil: only I/O can wake it)
  timer:stop()
  if t then timer:start(math.ceil(t * 1000), 0, pump) end
end
poll:start("r", pump)
pump()

-- the program's own work: a tick every 10 ms
local ticks = 0
local ticker = uv.new_timer()
ticker:start(10, 10, function() ticks = ticks + 1 end)

-- a line server on a free loopback port, answering from the mirror
local server = uv.new_tcp()
assert(server:bind("127.0.0.1", 0))
local port = server:getsockname().port
server:listen(16, function()
  local conn = uv.new_tcp()
  server:accept(conn)
  conn:read_start(function(err, data)
    if err or not data then conn:close() return end
    local key = data:match("^GET (%S+)")
    conn:write(key and ("%s = %s\n"):format(key, tostring(config:get("luv/config/" .. key))) or "ERR\n")
  end)
end)

-- the end: close every luv handle, so uv.run returns
local client, limit
local function finish(why)
  for _, h in ipairs { poll, timer, ticker, server, client, limit } do
    if not h:is_closing() then h:close() end
  end
  print(("%s after %d ticks of the program's own timer; the mirror applied %d changes"):format(
    why, ticks, config:status().changes))
end

-- a client of that server (luv too): asks once per answer until it has seen level 3
local seen = 0
client = uv.new_tcp()
client:connect("127.0.0.1", port, function(err)
  assert(not err, err)
  client:read_start(function(rerr, data)
    assert(not rerr, rerr)
    local level = data and tonumber(data:match("= (%d+)"))
    if level and level > seen then
      print(("client: the server answers %s"):format(data:gsub("\n$", "")))
      seen = level
    end
    if seen >= 3 or not data then return finish(seen >= 3 and "saw level 3" or "server gone") end
    local again = uv.new_timer()
    again:start(20, 0, function() again:close() client:write("GET level\n") end)
  end)
  client:write("GET level\n")
end)

-- the operator: a coord coroutine, run by the coord.step calls above
coord.spawn(function()
  for i = 1, 3 do
    assert(consul.kv:put("luv/config/level", tostring(i)))
    print(("operator: level = %d written to Consul"):format(i))
    assert(config:wait(function(m) return m:get("luv/config/level") == tostring(i) end, 5))
    coord.sleep(0.1)
  end
end)

-- at most 20 s, then everything stops
limit = uv.new_timer()
limit:start(20000, 0, function() finish("gave up after 20 s") end)
uv.run()
