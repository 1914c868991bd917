-- coord: non-blocking Consul and etcd access for Lua, on libuv and libcurl.
-- This module is the scheduler's public face; coord.http, coord.consul and coord.etcd
-- build on it.

local core = require "coord.core"
local sched = require "coord.sched"
local sync = require "coord.sync"
local errors = require "coord.errors"

local VERSION = "0.2.0"

local coord = {
  _VERSION = VERSION,
  spawn = sched.spawn,
  run = sched.run,
  step = sched.step,
  fd = sched.fd,
  pollable = sched.pollable,
  wrap = sched.wrap,
  sleep = sched.sleep,
  now = core.now,
  timeout = sched.timeout,
  gather = sched.gather,
  semaphore = sync.semaphore,
  queue = sync.queue,
  on_error = sched.on_error,
  error = errors.new,
  is_error = errors.is,
}

--- What coord runs on: its own version, Lua's, and what the loaded libcurl and libuv report.
coord.versions = { coord = VERSION, lua = _VERSION }
for k, v in pairs(core.versions) do coord.versions[k] = v end

coord.http = require "coord.http"

--- A local table of every key under prefix, kept current: see coord.mirror.
function coord.mirror(client, prefix, opts)
  return require("coord.mirror").new(client, prefix, opts)
end

-- The clients load on first use, so a program that only speaks to one backend never loads
-- the other: coord.etcd, coord.consul.
local lazy = { etcd = "coord.etcd", consul = "coord.consul" }
setmetatable(coord, {
  __index = function(t, k)
    local name = lazy[k]
    if not name then return nil end
    local m = require(name)
    rawset(t, k, m)
    return m
  end,
})

return coord
