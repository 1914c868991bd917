-- coord.consul.coordinate: network coordinates (/v1/coordinate): WAN by datacenter, LAN by node.

local args = require "coord.args"
local url = require "coord.url"

local M = {}

local Coordinate = { __name = "coord.consul.coordinate" }
Coordinate.__index = Coordinate

function M.new(client)
  return setmetatable({ client = client }, Coordinate)
end

--- The WAN coordinates of the servers, by datacenter: a list of {Datacenter, AreaID,
--- Coordinates = {{Node, Segment, Coord}, ...}}.
function Coordinate:datacenters(opts)
  return self.client:_read("/v1/coordinate/datacenters", args.opts(opts, 1, "datacenters"))
end

--- The LAN coordinates of the nodes of a datacenter: a list of {Node, Segment, Coord}.
--- opts: segment. Blocking.
function Coordinate:nodes(opts)
  opts = args.opts(opts, 1, "nodes")
  return self.client:_read("/v1/coordinate/nodes", opts,
    { segment = args.option(opts, "segment", "string", "nodes") })
end

--- The LAN coordinates of one node (a list: one per network segment); nil, nil, meta when
--- Consul has none for it (an unknown node, or one whose agent has not sent any yet). Blocking.
function Coordinate:node(name, opts)
  return self.client:_read("/v1/coordinate/node/" .. url.segment(name, 1, "node"), args.opts(opts, 2, "node"),
    nil, { 404 })
end

--- Sets the LAN coordinate of a node of the catalog: def = {Node, Segment, Coord = {Vec,
--- Error, Adjustment, Height}} (what an agent sends about itself). Consul applies it in its
--- next batch, a moment later, and ignores a node the catalog does not have. Returns true.
function Coordinate:update(def, opts)
  args.check(def, "table", 1, "update")
  return self.client:_write("/v1/coordinate/update", def, args.opts(opts, 2, "update"))
end

args.methods(Coordinate)

return M
