-- coord.consul.catalog: the catalog (/v1/catalog): services, nodes, datacenters, registration.

local consul = require "coord.consul"

local M = {}

local Catalog = { __name = "coord.consul.catalog" }
Catalog.__index = Catalog

function M.new(client)
  return setmetatable({ client = client }, Catalog)
end

local check_opts, pick = consul.check_opts, consul.pick
local segment = require("coord.url").segment

local function check_string(v, fname)
  if type(v) ~= "string" then
    error(("bad argument #1 to '%s' (string expected, got %s)"):format(fname, type(v)), 3)
  end
end

--- The services by name, each with its tags. opts: node_meta, filter; cached, max_age,
--- stale_if_error (the agent cache). Blocking.
function Catalog:services(opts)
  opts = check_opts(opts, "services", 1)
  return self.client:_get("/v1/catalog/services", opts, pick(opts, { "node_meta", "filter" }), nil, true)
end

--- The nodes providing a service. opts: tag, near, node_meta, filter; cached, max_age,
--- stale_if_error (the agent cache). Blocking.
function Catalog:service(name, opts)
  check_string(name, "service")
  opts = check_opts(opts, "service", 2)
  return self.client:_get("/v1/catalog/service/" .. segment(name, 1, "service"), opts,
    pick(opts, { "tag", "near", "node_meta", "filter" }), nil, true)
end

--- The nodes. opts: near, node_meta, filter. Blocking.
function Catalog:nodes(opts)
  opts = check_opts(opts, "nodes", 1)
  return self.client:_get("/v1/catalog/nodes", opts, pick(opts, { "near", "node_meta", "filter" }))
end

--- A node and its services ({Node, Services}), or nil when unknown. opts: filter. Blocking.
function Catalog:node(name, opts)
  check_string(name, "node")
  opts = check_opts(opts, "node", 2)
  local body, meta = self.client:_get("/v1/catalog/node/" .. segment(name, 1, "node"), opts, pick(opts, { "filter" }))
  return consul.value(body), meta
end

--- The known datacenters, nearest first. opts: cached, max_age, stale_if_error (the agent
--- cache).
function Catalog:datacenters(opts)
  opts = check_opts(opts, "datacenters", 1)
  return self.client:_get("/v1/catalog/datacenters", opts, nil, nil, true)
end

--- Registers a node, service or check in the catalog: def is Consul's JSON registration
--- (Node, Address, Service, Check, ...). Returns true, meta.
function Catalog:register(def, opts)
  if type(def) ~= "table" then error("bad argument #1 to 'register' (table expected, got " .. type(def) .. ")", 2) end
  return self.client:_put("/v1/catalog/register", def, check_opts(opts, "register", 2))
end

--- Removes a node, service or check from the catalog: def = {Node, ServiceID or CheckID}.
function Catalog:deregister(def, opts)
  if type(def) ~= "table" then error("bad argument #1 to 'deregister' (table expected, got " .. type(def) .. ")", 2) end
  return self.client:_put("/v1/catalog/deregister", def, check_opts(opts, "deregister", 2))
end

require("coord.args").methods(Catalog)

return M
