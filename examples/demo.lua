-- examples/demo.lua: what `make demo` runs. Until the Consul and etcd clients land, it shows
-- the engine: a producer and consumers on a queue, and HTTP requests racing a timeout.
local coord = require "coord"

print("coord demo (" .. coord._VERSION .. ", " .. coord.versions .. ")")
print("The Consul and etcd clients are not built yet; this shows the engine they run on.\n")

coord.run(function()
  local changes = coord.queue()
  coord.spawn(function()
    for i, v in ipairs({ "debug", "info", "warn" }) do
      coord.sleep(0.2)
      print(("[writer]  t=%.1fs  set log_level = %s"):format(i * 0.2, v))
      changes:put(v)
    end
    changes:close()
  end)
  for level in changes:items() do
    print(("[watcher] saw log_level -> %s"):format(level))
  end

  local res, err = coord.timeout(0.3, coord.http.get, "http://127.0.0.1:1/")
  print("\n[http] a request to a closed port returns: " .. tostring(res) .. ", " .. tostring(err))
end)
print("\ndone")
