-- coord.consul.status: the Raft status of the datacenter (/v1/status): leader and peers.

local consul = require "coord.consul"

local M = {}

local Status = { __name = "coord.consul.status" }
Status.__index = Status

function M.new(client)
  return setmetatable({ client = client }, Status)
end

--- The address ("ip:port") of the Raft leader, "" when there is none.
function Status:leader(opts)
  return self.client:_get("/v1/status/leader", consul.check_opts(opts, "leader", 1))
end

--- The addresses of the Raft peers.
function Status:peers(opts)
  return self.client:_get("/v1/status/peers", consul.check_opts(opts, "peers", 1))
end

require("coord.args").methods(Status)

return M
