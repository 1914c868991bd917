-- spec/etcd_client.lua: coord.etcd as the etcd specs use it. The same module, except that new()
-- gives a client the transport the run chose (COORD_SPEC_ETCD_TRANSPORT = json | grpc, default
-- json) unless its options name one, so one spec file runs on either transport (`make test`
-- runs the etcd specs a third time with grpc, on libcurl 8).

local etcd = require "coord.etcd"

local M = setmetatable({}, { __index = etcd })
local new = etcd.new

M.transport = os.getenv("COORD_SPEC_ETCD_TRANSPORT") or "json"
if M.transport ~= "json" and M.transport ~= "grpc" then
  error("COORD_SPEC_ETCD_TRANSPORT: 'json' or 'grpc' expected, got '" .. M.transport .. "'")
end

--- coord.etcd.new(opts) with opts.transport defaulting to the run's. Options that are not a
--- table go through unchanged (the specs of bad options still see new's own error).
function M.new(opts)
  if opts ~= nil and type(opts) ~= "table" then return new(opts) end
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  if o.transport == nil then o.transport = M.transport end
  return new(o)
end

--- Makes coord.etcd.new itself default to the run's transport, for a program that calls it
--- as users do (the examples: spec/examples_spec.lua runs them under
--- `lua5.4 -e 'require("etcd_client").install()'` when the run is on grpc).
function M.install()
  etcd.new = M.new
end

--- Whether the run's transport is grpc (for the few assertions whose documented behaviour
--- differs per transport, doc/grpc.md).
function M.grpc() return M.transport == "grpc" end

return M
