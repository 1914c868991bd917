-- coord.consul.agent: the local agent (/v1/agent): services, checks, TTL updates, members, self.

local consul = require "coord.consul"

local M = {}

local Agent = { __name = "coord.consul.agent" }
Agent.__index = Agent

function M.new(client)
  return setmetatable({ client = client }, Agent)
end

local args = require "coord.args"
local pick = consul._pick
local segment = require("coord.url").segment

--- Registers a service: def is Consul's JSON service definition (Name, ID, Tags, Address,
--- Port, Meta, Check, Checks, ...). opts.replace_existing_checks. Returns true, nil, meta.
function Agent:service_register(def, opts)
  args.check(def, "table", 1, "service_register")
  opts = args.opts(opts, 2, "service_register")
  return self.client:_write("/v1/agent/service/register", def, opts, pick(opts, { "replace_existing_checks" }))
end

--- Deregisters the service with this ID (and its checks). Returns true, nil, meta.
function Agent:service_deregister(id, opts)
  args.check(id, "string", 1, "service_deregister")
  return self.client:_write("/v1/agent/service/deregister/" .. segment(id, 1, "service_deregister"), nil, args.opts(opts, 2, "service_deregister"))
end

--- The services registered on this agent, by ID. opts.filter. Returns services, nil, meta.
function Agent:services(opts)
  opts = args.opts(opts, 1, "services")
  return self.client:_read("/v1/agent/services", opts, pick(opts, { "filter" }))
end

--- One service registered on this agent (nil, nil, meta when unknown); blocks on opts.hash +
--- wait (the agent answers with a content hash, meta.content_hash). Returns service, nil, meta.
function Agent:service(id, opts)
  args.check(id, "string", 1, "service")
  return self.client:_read("/v1/agent/service/" .. segment(id, 1, "service"), args.opts(opts, 2, "service"), nil, { 404 })
end

--- Registers a check: def is Consul's JSON check definition (Name, ID, TTL, HTTP, ...).
function Agent:check_register(def, opts)
  args.check(def, "table", 1, "check_register")
  return self.client:_write("/v1/agent/check/register", def, args.opts(opts, 2, "check_register"))
end

--- Deregisters the check with this ID. Returns true, nil, meta.
function Agent:check_deregister(id, opts)
  args.check(id, "string", 1, "check_deregister")
  return self.client:_write("/v1/agent/check/deregister/" .. segment(id, 1, "check_deregister"), nil, args.opts(opts, 2, "check_deregister"))
end

--- The checks registered on this agent, by ID. opts.filter. Returns checks, nil, meta.
function Agent:checks(opts)
  opts = args.opts(opts, 1, "checks")
  return self.client:_read("/v1/agent/checks", opts, pick(opts, { "filter" }))
end

local statuses = { passing = "pass", warning = "warn", critical = "fail" }

--- Sets a TTL check's status ("passing", "warning" or "critical") and output. Returns true, nil, meta.
function Agent:update_ttl(id, output, status, opts)
  args.check(id, "string", 1, "update_ttl")
  if output ~= nil then args.check(output, "string", 2, "update_ttl") end
  if not statuses[status] then
    error("bad argument #3 to 'update_ttl' (passing, warning or critical expected, got " .. tostring(status) .. ")", 2)
  end
  return self.client:_write("/v1/agent/check/update/" .. segment(id, 1, "update_ttl"), { Status = status, Output = output },
    args.opts(opts, 4, "update_ttl"))
end

-- pass_ttl, warn_ttl, fail_ttl: PUT /v1/agent/check/pass|warn|fail/:id?note=
for _, verb in pairs(statuses) do
  local fname = verb .. "_ttl"
  Agent[fname] = function(self, id, note, opts)
    args.check(id, "string", 1, fname)
    if note ~= nil then args.check(note, "string", 2, fname) end
    return self.client:_write("/v1/agent/check/" .. verb .. "/" .. segment(id, 1, fname), nil,
      args.opts(opts, 3, fname), { note = note })
  end
end

--- The cluster members this agent sees (opts.wan, opts.segment). Returns members, nil, meta.
function Agent:members(opts)
  opts = args.opts(opts, 1, "members")
  return self.client:_read("/v1/agent/members", opts, pick(opts, { "wan", "segment" }))
end

--- The agent's configuration and member information. Returns self, nil, meta.
function Agent:self(opts)
  return self.client:_read("/v1/agent/self", args.opts(opts, 1, "self"))
end

-- Maintenance mode on or off: enable=false must be sent too, so it goes as a string.
local function maintenance(self, path, enable, reason, opts, i, fname)
  args.check(enable, "boolean", i, fname)
  args.check(reason, "string", i + 1, fname, true)
  return self.client:_write(path, nil, args.opts(opts, i + 2, fname), { enable = tostring(enable), reason = reason })
end

--- Puts this agent's node in maintenance mode (enable = true, with an optional reason) or
--- takes it out: while on, the critical check `_node_maintenance` (Notes = reason) keeps every
--- service of the node out of healthy answers. Returns true.
function Agent:maintenance(enable, reason, opts)
  return maintenance(self, "/v1/agent/maintenance", enable, reason, opts, 1, "maintenance")
end

--- Maintenance mode for one service of this agent: the critical check
--- `_service_maintenance:<id>`. An unknown service is an error of kind "not_found". Returns true.
function Agent:service_maintenance(id, enable, reason, opts)
  local path = "/v1/agent/service/maintenance/" .. segment(id, 1, "service_maintenance")
  return maintenance(self, path, enable, reason, opts, 2, "service_maintenance")
end

args.methods(Agent)

return M
