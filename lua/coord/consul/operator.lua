-- coord.consul.operator: the servers' Raft configuration and autopilot's view of their health
-- (/v1/operator).

local args = require "coord.args"
local core = require "coord.core"
local errors = require "coord.errors"

local M = {}

local Operator = { __name = "coord.consul.operator" }
Operator.__index = Operator

function M.new(client)
  return setmetatable({ client = client }, Operator)
end

--- The Raft configuration: {Servers = {{ID, Node, Address, Leader, Voter, ProtocolVersion},
--- ...}, Index}. CLI: `consul operator raft list-peers`. opts.stale asks any server.
function Operator:raft_peers(opts)
  return self.client:_read("/v1/operator/raft/configuration", args.opts(opts, 1, "raft_peers"))
end

local Meta = errors.record("consul.meta")

--- Autopilot's health report: {Healthy, FailureTolerance, Servers = {{ID, Name, Address,
--- SerfStatus, Version, Leader, LastContact, LastTerm, LastIndex, Healthy, Voter,
--- StableSince}, ...}}. Consul answers 429 when the cluster is not healthy: that is the
--- report too (Healthy = false), with a meta that holds only status = 429. Not retried by
--- default (retries = n changes it, for 429 as well as 500).
function Operator:autopilot_health(opts)
  opts = args.opts(opts, 1, "autopilot_health")
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  if o.retries == nil then o.retries = 0 end
  local report, err, meta = self.client:_read("/v1/operator/autopilot/health", o)
  if err and err.status == 429 and type(err.body) == "string" then
    local r = core.json_decode(err.body)
    if type(r) == "table" and r.Healthy ~= nil then return r, nil, setmetatable({ status = 429 }, Meta) end
  end
  if err then return nil, err end
  return report, nil, meta
end

args.methods(Operator)

return M
