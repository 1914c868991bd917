-- coord.consul.discovery: services_watch, the instances of a service for a gateway: the current
-- list, then each change, from one blocking health query shared by identical watches.

local consul = require "coord.consul"
local args = require "coord.args"
local url = require "coord.url"
local watch = require "coord.consul.watch"

local M = {}

local value = consul._value

-- Check statuses from best to worst; an instance's status is its worst check's.
local rank = { passing = 1, warning = 2, critical = 3 }

-- The instance of one /v1/health/service entry ({Node, Service, Checks}).
local function instance(e)
  local node, svc = e.Node or {}, e.Service or {}
  local status, worst = "passing", 1
  for _, c in ipairs(value(e.Checks) or {}) do
    local r = rank[c.Status] or 3
    if r > worst then status, worst = c.Status, r end
  end
  local address = value(svc.Address)
  if address == nil or address == "" then address = node.Address end
  return {
    id = svc.ID, service = svc.Service, address = address, port = svc.Port,
    tags = value(svc.Tags) or {}, meta = value(svc.Meta) or {},
    node = node.Node, node_address = node.Address, datacenter = node.Datacenter, status = status,
  }
end

local function instances(list)
  local out = {}
  for i, e in ipairs(list) do out[i] = instance(e) end
  return out
end

-- The options that make two watches of one service different queries.
local distinct = { "passing", "tag", "near", "filter", "cached" }

-- The options checked here, before the shared query's task could raise on them.
local option_types = {
  passing = "boolean", tag = "string", near = "string", filter = "string", cached = "boolean",
  token = "string", dc = "string", consistency = "string", stale = "boolean", consistent = "boolean",
  ns = "string", partition = "string", timeout = "number",
}

--- consul:services_watch(service, opts): see doc/consul.md.
function M.watch(client, service, opts)
  local seg = url.segment(service, 1, "services_watch")
  opts = args.opts(opts, 2, "services_watch")
  for name, want in pairs(option_types) do
    if opts[name] ~= nil then args.option(opts, name, want, "services_watch") end
  end
  watch.check_rate(opts, 3, "services_watch")
  local path = "/v1/health/service/" .. seg
  local query = { passing = opts.passing, tag = opts.tag, near = opts.near, filter = opts.filter }
  local function fetch(o)
    o.max_age, o.stale_if_error = nil, nil -- not offered: the agent cache refreshes a blocking read itself
    return client:_read(path, o, query, nil, true)
  end
  return watch.shared(client, "\0services\0" .. service, opts, distinct, fetch, instances)
end

return M
