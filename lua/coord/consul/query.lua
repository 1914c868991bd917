-- coord.consul.query: prepared queries (/v1/query): define, list, read, change, delete, execute, explain.

local args = require "coord.args"
local url = require "coord.url"

local M = {}

local Query = { __name = "coord.consul.query" }
Query.__index = Query

function M.new(client)
  return setmetatable({ client = client }, Query)
end

-- Consul answers a change or delete of an unknown query with a 500 "Cannot modify
-- non-existent prepared query": that is kind "not_found", as a 404 would be.
local function not_found(ok, err, meta)
  if ok == nil and err.status == 500 and tostring(err.message):find("non-existent prepared query", 1, true) then
    err.kind = "not_found"
  end
  return ok, err, meta
end

--- Defines a prepared query: def is Consul's JSON definition (Name, Service = {Service,
--- Failover, OnlyPassing, Tags, Near, ...}, Template, DNS, Session, Token). Returns its ID.
function Query:create(def, opts)
  args.check(def, "table", 1, "create")
  local body, err, meta = self.client:_write("/v1/query", def, args.opts(opts, 2, "create"), nil, "POST")
  if body == nil then return nil, err end
  return body.ID, nil, meta
end

--- Every prepared query defined (a list of definitions with their ID).
function Query:list(opts)
  return self.client:_read("/v1/query", args.opts(opts, 1, "list"))
end

--- The definition of the query with this ID; nil, nil, meta when there is none.
function Query:get(id, opts)
  url.uuid(id, 1, "get")
  local list, err, meta = self.client:_read("/v1/query/" .. id, args.opts(opts, 2, "get"), nil, { 404 })
  if err then return nil, err end
  return list and list[1], nil, meta
end

--- Replaces the definition of the query with this ID. Returns true.
function Query:update(id, def, opts)
  url.uuid(id, 1, "update")
  args.check(def, "table", 2, "update")
  return not_found(self.client:_write("/v1/query/" .. id, def, args.opts(opts, 3, "update")))
end

--- Deletes the query with this ID. Returns true.
function Query:delete(id, opts)
  url.uuid(id, 1, "delete")
  return not_found(self.client:_write("/v1/query/" .. id, nil, args.opts(opts, 2, "delete"), nil, "DELETE"))
end

--- Runs the query (by ID or name): {Service, Nodes, DNS, Datacenter, Failovers}; the
--- datacenter that answered and the number of datacenters tried before it are also in the meta
--- (meta.datacenter, meta.failovers). nil, nil, meta when no such query. opts: near ("_agent"
--- or a node name), limit, connect; cached, max_age, stale_if_error (the agent cache).
function Query:execute(id_or_name, opts)
  local path = "/v1/query/" .. url.segment(id_or_name, 1, "execute") .. "/execute"
  opts = args.opts(opts, 2, "execute")
  local q = { near = args.option(opts, "near", "string", "execute"),
    limit = args.option(opts, "limit", "integer", "execute"),
    connect = args.option(opts, "connect", "boolean", "execute") }
  local result, err, meta = self.client:_read(path, opts, q, { 404 }, true)
  if err then return nil, err end
  if result then meta.datacenter, meta.failovers = result.Datacenter, result.Failovers end
  return result, nil, meta
end

--- The query (by ID or name) as it would run: its definition with a template's
--- interpolations done. nil, nil, meta when no such query.
function Query:explain(id_or_name, opts)
  local path = "/v1/query/" .. url.segment(id_or_name, 1, "explain") .. "/explain"
  local body, err, meta = self.client:_read(path, args.opts(opts, 2, "explain"), nil, { 404 })
  if err then return nil, err end
  return body and body.Query, nil, meta
end

args.methods(Query)

return M
