-- coord.consul.txn: transactions (/v1/txn): KV operations applied all together or not at all.

local core = require "coord.core"
local consul = require "coord.consul"
local errors = require "coord.errors"
local kv = require "coord.consul.kv"
local args = require "coord.args"

local M = {}

local Txn = { __name = "coord.consul.txn" }
Txn.__index = Txn

function M.new(client)
  return setmetatable({ client = client }, Txn)
end

--- Operations per transaction that Consul accepts (64 before 1.14, 128 from 1.14 on).
M.max_ops = 64

local verbs = {
  set = true, cas = true, lock = true, unlock = true, get = true, ["get-tree"] = true,
  ["check-index"] = true, ["check-session"] = true, ["check-not-exists"] = true,
  delete = true, ["delete-tree"] = true, ["delete-cas"] = true,
}

-- The wire form of one operation: a KV op from {verb, key, value, flags, index, session},
-- any other table (a Node, Service or Check op) as it is.
local function wire(op, i)
  if type(op) ~= "table" then
    error(("bad argument #1 to 'run' (operation %d: table expected, got %s)"):format(i, type(op)), 4)
  end
  if op.verb == nil then return op end
  if not verbs[op.verb] then
    error(("bad argument #1 to 'run' (operation %d: unknown verb %s)"):format(i, tostring(op.verb)), 4)
  end
  if type(op.key) ~= "string" then
    error(("bad argument #1 to 'run' (operation %d: key must be a string)"):format(i), 4)
  end
  if op.flags ~= nil and math.type(op.flags) ~= "integer" then
    error(("bad argument #1 to 'run' (operation %d: flags must be an integer)"):format(i), 4)
  end
  return { KV = {
    Verb = op.verb, Key = op.key, Value = op.value and core.b64encode(op.value) or nil,
    -- a uint64 above 2^63-1 must reach JSON unsigned: sent as a string, unquoted below
    Flags = op.flags and core.u64tostring(op.flags) or nil,
    Index = op.index, Session = op.session,
  } }
end

local function result(r)
  if r.KV then return { kv = kv._entry(r.KV) } end
  return r
end

--- Applies ops (at most txn.max_ops, checked before sending). Returns result, nil, meta:
--- result.applied is true with result.results (results[i] = {kv = entry} for KV results,
--- others as Consul sends them), or false when Consul rolled it back, with result.errors
--- (errors[i] = {op = 1-based index, what = text}): a rolled-back transaction is an answer,
--- not a failure. nil, err on failure. opts: the common call options and max_ops.
function Txn:run(ops, opts)
  args.check(ops, "table", 1, "run")
  opts = args.opts(opts, 2, "run")
  local max = args.option(opts, "max_ops", "integer", "run") or M.max_ops
  if #ops > max then
    return nil, errors.new("limit", ("transaction has %d operations; Consul accepts at most %d"):format(#ops, max))
  end
  local body = {}
  for i, op in ipairs(ops) do body[i] = wire(op, i) end
  local json = core.json_encode(setmetatable(body, { __jsontype = "array" })):gsub('"Flags":"(%d+)"', '"Flags":%1')
  local o = consul._call_opts(opts, nil, "run")
  o.body, o.ok = json, { 409 }
  local res, err = self.client:_call("PUT", "/v1/txn", o)
  if not res then return nil, err end
  local out = {}
  if res.status == 409 then
    for i, e in ipairs(consul._value(res.body.Errors) or {}) do
      out[i] = { op = e.OpIndex + 1, what = e.What }
    end
    return { applied = false, errors = out }, nil, res.meta
  end
  for i, r in ipairs(consul._value(res.body.Results) or {}) do out[i] = result(r) end
  return { applied = true, results = out }, nil, res.meta
end

args.methods(Txn)

return M
