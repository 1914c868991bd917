-- coord.consul.status: the Raft status of the datacenter (/v1/status): leader and peers.

local args = require "coord.args"

local M = {}

local Status = { __name = "coord.consul.status" }
Status.__index = Status

function M.new(client)
  return setmetatable({ client = client }, Status)
end

--- The address ("ip:port") of the Raft leader, "" when there is none; nil and the meta.
function Status:leader(opts)
  return self.client:_read("/v1/status/leader", args.opts(opts, 1, "leader"))
end

--- The addresses of the Raft peers, nil and the meta.
function Status:peers(opts)
  return self.client:_read("/v1/status/peers", args.opts(opts, 1, "peers"))
end

args.methods(Status)

return M
