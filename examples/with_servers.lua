-- examples/with_servers.lua: runs a command with a throwaway etcd and Consul dev agent on
-- free loopback ports, then stops them. The command finds them the way etcdctl and the
-- consul CLI do: ETCDCTL_ENDPOINTS and CONSUL_HTTP_ADDR.
--   lua5.4 examples/with_servers.lua lua5.4 examples/demo.lua
-- Uses the specs' server harness (spec/servers.lua), so LUA_PATH must include spec/.

local servers = require "servers"

if #arg == 0 then
  io.stderr:write("usage: lua5.4 examples/with_servers.lua COMMAND [ARGS...]\n")
  os.exit(2)
end

local etcd <close> = servers.etcd {}
local consul <close> = servers.consul {}
local _, etcd_version = servers.sh(servers.sh_quote(servers.bin.etcd["3.4"]) .. " --version")
local _, consul_version = servers.sh(servers.sh_quote(servers.bin.consul) .. " version")
io.write(("started %s at %s\nstarted %s at %s\n(both stop when the program ends)\n\n"):format(
  "etcd " .. (etcd_version:match("etcd Version: ([%d.]+)") or "?"), etcd.endpoint,
  "Consul " .. (consul_version:match("Consul v([%d.]+)") or "?"), consul.address))
io.flush()

local words = {}
for i = 1, #arg do words[i] = servers.sh_quote(arg[i]) end
local wrapper = os.getenv("COORD_TEST_WRAPPER")
local cmd = ("ETCDCTL_ENDPOINTS=%s CONSUL_HTTP_ADDR=%s %s%s"):format(servers.sh_quote(etcd.endpoint),
  servers.sh_quote(consul.address), wrapper and (wrapper .. " ") or "", table.concat(words, " "))
local ok, how, code = os.execute(cmd)
etcd:stop()
consul:stop()
if not ok then os.exit(how == "exit" and code or 1) end
