-- coord.consul.catalog: the catalog (/v1/catalog): services, nodes, datacenters, registration.

local consul = require "coord.consul"

local M = {}

local Catalog = { __name = "coord.consul.catalog" }
Catalog.__index = Catalog

function M.new(client)
  return setmetatable({ client = client }, Catalog)
end

local args = require "coord.args"
local pick = consul._pick
local segment = require("coord.url").segment

--- The services by name, each with its tags. opts: node_meta, filter; cached, max_age,
--- stale_if_error (the agent cache). Blocking.
function Catalog:services(opts)
  opts = args.opts(opts, 1, "services")
  return self.client:_read("/v1/catalog/services", opts, pick(opts, { "node_meta", "filter" }), nil, true)
end

--- The nodes providing a service. opts: tag, near, node_meta, filter; cached, max_age,
--- stale_if_error (the agent cache). Blocking.
function Catalog:service(name, opts)
  args.check(name, "string", 1, "service")
  opts = args.opts(opts, 2, "service")
  return self.client:_read("/v1/catalog/service/" .. segment(name, 1, "service"), opts,
    pick(opts, { "tag", "near", "node_meta", "filter" }), nil, true)
end

--- The nodes. opts: near, node_meta, filter. Blocking.
function Catalog:nodes(opts)
  opts = args.opts(opts, 1, "nodes")
  return self.client:_read("/v1/catalog/nodes", opts, pick(opts, { "near", "node_meta", "filter" }))
end

--- A node and its services ({Node, Services}); nil, nil, meta when unknown. opts: filter. Blocking.
function Catalog:node(name, opts)
  args.check(name, "string", 1, "node")
  opts = args.opts(opts, 2, "node")
  local body, err, meta = self.client:_read("/v1/catalog/node/" .. segment(name, 1, "node"), opts, pick(opts, { "filter" }))
  if err then return nil, err end
  return consul._value(body), nil, meta
end

--- The known datacenters, nearest first. opts: cached, max_age, stale_if_error (the agent
--- cache).
function Catalog:datacenters(opts)
  opts = args.opts(opts, 1, "datacenters")
  return self.client:_read("/v1/catalog/datacenters", opts, nil, nil, true)
end

--- Registers a node, service or check in the catalog: def is Consul's JSON registration
--- (Node, Address, Service, Check, ...). Returns true, nil, meta.
function Catalog:register(def, opts)
  args.check(def, "table", 1, "register")
  return self.client:_write("/v1/catalog/register", def, args.opts(opts, 2, "register"))
end

--- Removes a node, service or check from the catalog: def = {Node, ServiceID or CheckID}.
function Catalog:deregister(def, opts)
  args.check(def, "table", 1, "deregister")
  return self.client:_write("/v1/catalog/deregister", def, args.opts(opts, 2, "deregister"))
end

args.methods(Catalog)

return M
