-- coord.consul.event: user events (/v1/event): fire and list.

local core = require "coord.core"
local consul = require "coord.consul"
local segment = require("coord.url").segment

local M = {}

local Event = { __name = "coord.consul.event" }
Event.__index = Event

function M.new(client)
  return setmetatable({ client = client }, Event)
end

local function decode(e)
  local p = consul.value(e.Payload)
  e.Payload = p and assert(core.b64decode(p)) or nil
  return e
end

--- Fires event `name` with an optional payload (any bytes). opts: node, service, tag
--- (filters of who should act on it). Returns the event ({ID, Name, Payload, LTime, ...}), meta.
function Event:fire(name, payload, opts)
  if type(name) ~= "string" then error("bad argument #1 to 'fire' (string expected, got " .. type(name) .. ")", 2) end
  if payload ~= nil and type(payload) ~= "string" then
    error("bad argument #2 to 'fire' (string or nil expected, got " .. type(payload) .. ")", 2)
  end
  opts = consul.check_opts(opts, "fire", 3)
  local body, meta = self.client:_put("/v1/event/fire/" .. segment(name, 1, "fire"), payload or "", opts,
    consul.pick(opts, { "node", "service", "tag" }))
  if not body then return nil, meta end
  return decode(body), meta
end

--- The most recent events this agent has seen (opts.name filters). Blocking: meta.index is
--- an opaque uint64 (often above 2^63, so negative in Lua); pass it back as opts.index.
function Event:list(opts)
  opts = consul.check_opts(opts, "list", 1)
  local body, meta = self.client:_get("/v1/event/list", opts, consul.pick(opts, { "name" }))
  if not body then return nil, meta end
  for _, e in ipairs(body) do decode(e) end
  return body, meta
end

--- A watch that delivers each event named name (nil: every event) once, in LTime order
--- (see coord.consul.event_watch). opts: from ("now" or "all"), and the watch options.
function Event:watch(name, opts)
  return require("coord.consul.event_watch").new(self, name, opts)
end

require("coord.args").methods(Event)

return M
