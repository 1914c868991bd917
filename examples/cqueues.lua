-- examples/cqueues.lua: coord inside a cqueues program (Debian's lua-cqueues). The cqueues
-- controller runs everything: a TCP server answering "GET key" from a mirror of etcd's
-- "cq/config/" prefix, a client asking it, and an operator that writes to etcd. coord is a
-- guest: one cqueues coroutine polls coord.pollable() and calls coord.step(0); code in
-- cqueues coroutines calls coord through coord.wrap(fn, cqueues.poll).
local cqueues = require "cqueues"
local socket = require "cqueues.socket"
local coord = require "coord"

local etcd = coord.etcd.new() -- endpoints from ETCDCTL_ENDPOINTS
local config <close> = coord.mirror(etcd, "cq/config/")
local cq = cqueues.new()
local finished = false

-- coord's share of the controller: wait for its fd or its next timer, then run what is ready
cq:wrap(function()
  local p = coord.pollable()
  while not finished do
    cqueues.poll(p, 0.5) -- 0.5: look at `finished` at least that often
    coord.step(0)
  end
end)

-- a line server on a free loopback port, answering from the mirror (never waits on etcd)
local server = socket.listen("127.0.0.1", 0)
local _, _, port = server:localname()
cq:wrap(function()
  while not finished do
    local conn = server:accept(0.2) -- nil after 0.2 s without a client
    if conn then cq:wrap(function()
      for line in conn:lines("*l") do
        local key = line:match("^GET (%S+)$")
        conn:write(key and ("%s = %s\n"):format(key, tostring(config:get("cq/config/" .. key))) or "ERR\n")
      end
      conn:close()
    end) end
  end
  server:close()
end)

-- the operator: a cqueues coroutine that calls coord (etcd:put waits for its reply)
local written = 0
cq:wrap(coord.wrap(function()
  for i = 1, 3 do
    assert(etcd:put("cq/config/level", tostring(i)))
    written = i
    print(("operator: level = %d written to etcd"):format(i))
    assert(config:wait(function(m) return m:get("cq/config/level") == tostring(i) end, 5))
    cqueues.sleep(0.05) -- a cqueues wait inside the wrapped function goes to the controller
  end
end, cqueues.poll))

-- a client of the line server: asks until it has seen every level the operator wrote
cq:wrap(function()
  local conn = assert(socket.connect("127.0.0.1", port))
  local seen, deadline = 0, cqueues.monotime() + 10
  while seen < 3 and cqueues.monotime() < deadline do
    conn:write("GET level\n")
    local answer = conn:read("*l")
    local level = tonumber(answer:match("= (%d+)"))
    if level and level > seen then
      print(("client: the server answers %s"):format(answer))
      seen = level
    end
    cqueues.sleep(0.02)
  end
  conn:close()
  print(("client saw %d levels; the mirror applied %d changes"):format(seen, config:status().changes))
  finished = true
end)

local ok, err = cq:loop()
assert(ok, err)
assert(written == 3, "the operator did not finish")
