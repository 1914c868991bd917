-- coord.consul.health: health information (/v1/health): service instances, checks, node, state.

local consul = require "coord.consul"

local M = {}

local Health = { __name = "coord.consul.health" }
Health.__index = Health

function M.new(client)
  return setmetatable({ client = client }, Health)
end

local args = require "coord.args"
local pick = consul._pick
local segment = require("coord.url").segment

-- Every call takes one name and returns a list, nil and the meta; all support blocking (index + wait) and filter.
-- cache: the agent caches this endpoint (options cached, max_age, stale_if_error).
local function read(fname, base, names, cache)
  return function(self, name, opts)
    args.check(name, "string", 1, fname)
    opts = args.opts(opts, 2, fname)
    return self.client:_read(base .. segment(name, 1, fname), opts, pick(opts, names), nil, cache)
  end
end

--- The instances of a service with their node and checks ({Node, Service, Checks}).
--- opts: passing (only instances whose checks all pass), tag, near, node_meta, filter;
--- cached, max_age, stale_if_error (the agent cache: meta.cache says "HIT" or "MISS").
Health.service = read("service", "/v1/health/service/", { "passing", "tag", "near", "node_meta", "filter" }, true)

--- The checks of a service. opts: near, node_meta, filter.
Health.checks = read("checks", "/v1/health/checks/", { "near", "node_meta", "filter" })

--- The checks of a node. opts: filter.
Health.node = read("node", "/v1/health/node/", { "filter" })

--- The checks in a state ("any", "passing", "warning", "critical"). opts: near, node_meta, filter.
Health.state = read("state", "/v1/health/state/", { "near", "node_meta", "filter" })

args.methods(Health)

return M
