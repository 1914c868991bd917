-- coord.consul.event: user events (/v1/event): fire and list.

local core = require "coord.core"
local consul = require "coord.consul"
local args = require "coord.args"
local segment = require("coord.url").segment

local M = {}

local Event = { __name = "coord.consul.event" }
Event.__index = Event

function M.new(client)
  return setmetatable({ client = client }, Event)
end

local function decode(e)
  local p = consul._value(e.Payload)
  e.Payload = p and assert(core.b64decode(p)) or nil
  return e
end

--- Fires event `name` with an optional payload (any bytes). opts: node, service, tag
--- (filters of who should act on it). Returns the event ({ID, Name, Payload, LTime, ...}), nil, meta.
function Event:fire(name, payload, opts)
  args.check(name, "string", 1, "fire")
  args.check(payload, "string", 2, "fire", true)
  opts = args.opts(opts, 3, "fire")
  local body, err, meta = self.client:_write("/v1/event/fire/" .. segment(name, 1, "fire"), payload or "", opts,
    consul._pick(opts, { "node", "service", "tag" }))
  if not body then return nil, err end
  return decode(body), nil, meta
end

--- The most recent events this agent has seen (opts.name filters). Blocking: meta.index is
--- an opaque uint64 (often above 2^63, so negative in Lua); pass it back as opts.index.
function Event:list(opts)
  opts = args.opts(opts, 1, "list")
  local body, err, meta = self.client:_read("/v1/event/list", opts, consul._pick(opts, { "name" }))
  if not body then return nil, err end
  for _, e in ipairs(body) do decode(e) end
  return body, nil, meta
end

--- A watch that delivers each event named name (nil: every event) once, in LTime order
--- (see coord.consul.event_watch). opts: from ("now" or "all"), and the watch options.
function Event:watch(name, opts)
  return require("coord.consul.event_watch").new(self, name, opts)
end

args.methods(Event)

return M
