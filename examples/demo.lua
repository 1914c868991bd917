-- examples/demo.lua: what `make demo` runs. A live configuration watch on etcd and on Consul:
-- each backend's "demo/config/" prefix is mirrored into a Lua table, a writer coroutine
-- changes a few keys, and every change is printed as the mirror receives it.
-- Run it with servers: lua5.4 examples/with_servers.lua lua5.4 examples/demo.lua
local coord = require "coord"

local etcd = coord.etcd.new()     -- endpoints from ETCDCTL_ENDPOINTS
local consul = coord.consul.new() -- address from CONSUL_HTTP_ADDR
local prefix = "demo/config/"
local t0 = coord.now()

local function say(who, fmt, ...)
  print(("%6.3fs  %-8s " .. fmt):format(coord.now() - t0, who, ...))
end

-- One writer for both backends: the same call shape on each.
local backends = {
  { name = "etcd", client = etcd, put = function(k, v) return etcd:put(k, v) end,
    delete = function(k) return etcd:delete(k) end },
  { name = "consul", client = consul, put = function(k, v) return consul.kv:put(k, v) end,
    delete = function(k) return consul.kv:delete(k) end },
}

local script = {
  { "put", "log_level", "debug" },
  { "put", "max_players", "32" },
  { "put", "motd", "hello from coord" },
  { "delete", "motd" },
  { "put", "log_level", "warn" },
}

print(("coord %s: live configuration from etcd and Consul"):format(coord._VERSION:match("[%d.]+$")))
print(("Each backend's %q prefix is mirrored into a Lua table. A writer coroutine"):format(prefix))
print("changes keys; the mirrors print each change as it arrives.\n")

coord.run(function()
  for _, b in ipairs(backends) do
    assert(b.put(prefix .. "log_level", "info"))
    assert(b.put(prefix .. "max_players", "16"))
  end

  local mirrors = {}
  for _, b in ipairs(backends) do
    mirrors[b.name] = coord.mirror(b.client, prefix, {
      on_change = function(key, new, old)
        local short = key:sub(#prefix + 1)
        if old == nil then
          say(b.name, "%-12s = %s", short, new)
        elseif new == nil then
          say(b.name, "%-12s deleted (was %s)", short, old)
        else
          say(b.name, "%-12s %s -> %s", short, old, new)
        end
      end,
    })
  end
  for name, m in pairs(mirrors) do
    local ok, err = m:wait(function() return m:status().synced end, 10)
    if not ok then error(name .. " mirror did not sync: " .. tostring(err)) end
  end
  print(("%6.3fs  both mirrors hold a snapshot; now the writer starts\n"):format(coord.now() - t0))

  for _, step in ipairs(script) do
    coord.sleep(0.3)
    local op, key, value = step[1], prefix .. step[2], step[3]
    for _, b in ipairs(backends) do
      say("writer", "%s %s %s%s", b.name, op, step[2], value and (" = " .. value) or "")
      assert(b[op](key, value))
    end
  end

  -- wait until both mirrors have seen the last write, then show their tables
  for _, b in ipairs(backends) do
    local m = mirrors[b.name]
    assert(m:wait(function() return m:get(prefix .. "log_level") == "warn" and m:get(prefix .. "motd") == nil end, 10))
  end
  print("\nThe mirrored tables now:")
  for _, b in ipairs(backends) do
    local m = mirrors[b.name]
    local keys = {}
    for k, v in pairs(m) do keys[#keys + 1] = ("%s=%s"):format(k:sub(#prefix + 1), v) end
    table.sort(keys)
    local st = m:status()
    print(("  %-7s { %s }  (%d changes applied, at %s %d)"):format(b.name, table.concat(keys, ", "), st.changes,
      st.revision and "revision" or "index", st.revision or st.index))
    m:close()
  end
end)
print("\ndone")
