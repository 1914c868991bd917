-- coord.etcd.watch: etcd:watch(key[, opts]), a watch read as an iterator of events; all the
-- watches of a client share one multiplexed stream (coord.etcd.watch_hub).

local sched = require "coord.sched"
local errors = require "coord.errors"
local proto = require "coord.etcd.proto"
local hubs = require "coord.etcd.watch_hub"
local args = require "coord.args"

local M = {}

local b64 = proto.b64

local DEFAULT_BUFFER = 1000

local Watch = { __name = "coord.etcd.watch" }
Watch.__index = Watch
M.Watch = Watch

-- The create_request (without watch_id and start_revision) for key and opts: the same keys
-- as range and delete select, under the client's namespace prefix.
local function request(client, key, opts)
  local full, range_end = require("coord.etcd")._key_range(client, key, opts, "watch")
  local filters
  if opts.no_put or opts.no_delete then
    filters = {}
    if opts.no_put then filters[#filters + 1] = "NOPUT" end
    if opts.no_delete then filters[#filters + 1] = "NODELETE" end
  end
  return {
    key = b64(full),
    range_end = range_end and b64(range_end) or nil,
    prev_kv = opts.prev_kv and true or nil,
    progress_notify = opts.progress_notify and true or nil,
    filters = filters,
    -- always: large batches travel in pieces of at most the server's request size limit
    fragment = true,
  }
end

local check, option = args.check, args.option

--- Starts watching key (or a prefix or range of keys) on client; see doc/etcd-watch.md.
--- Returns the watch, then nil, nil and the watch again: the 4th value is the closing value
--- of a generic for, so that `for ev in etcd:watch(k) do ... end` closes the watch when the
--- loop is left (break, return or an error), as Consul's watches do.
function M.new(client, key, opts)
  check(key, "string", 1, "watch")
  opts = args.opts(opts, 2, "watch")
  option(opts, "range_end", "string", "watch")
  local start = option(opts, "start_revision", "integer", "watch") or option(opts, "revision", "integer", "watch")
  local buffer = option(opts, "buffer", "integer", "watch") or DEFAULT_BUFFER
  local keepalive = option(opts, "keepalive", "number", "watch")
  if keepalive and not (keepalive > 0) then error("bad option 'keepalive' to 'watch' (positive number expected)", 2) end
  if buffer < 1 then error("bad option 'buffer' to 'watch' (positive integer expected)", 2) end
  local w = setmetatable({
    key = key,
    req = request(client, key, opts),
    next_rev = start and start > 0 and start or nil,
    progress = opts.progress_notify and true or false,
    stream_events = option(opts, "stream_events", "boolean", "watch") or false,
    buffer = buffer,
    keepalive = keepalive,
    share = option(opts, "share", "boolean", "watch"),
    q = {}, qh = 1, qt = 0,
    readers = {},
    revision = nil,
    error = nil,
    closed = false,
    state = "new",
  }, Watch)
  w.hub = hubs.of(client)
  w.hub:add(w)
  return w, nil, nil, w
end

--- Counters of client's shared watch stream: {watches, connected, streams, results,
--- fragments, pauses, last_error}.
function M.stats(client)
  return hubs.of(client):stats()
end

--- Whether, over TLS, watch streams share the requests' HTTP/2 connection (true) or use an
--- HTTP/1.1 connection of their own (false). Default: true with libcurl 8 or newer, false
--- before. Returns the previous setting.
function M.http2(on)
  check(on, "boolean", 1, "http2")
  local old = hubs.HTTP2
  hubs.HTTP2 = on
  return old
end

---------------------------------------------------------------------------------------------
-- called by the hub

local function wake_readers(w)
  local rs = w.readers
  if #rs > 0 then
    w.readers = {}
    for i = 1, #rs do sched.wake(rs[i]) end
  end
end

function Watch:_created(rev)
  if not self.created_revision then self.created_revision = rev end
  if self.stream_down then
    self.stream_down = false
    if self.stream_events then return self:_push { { type = "reconnected", revision = rev } } end
  end
  wake_readers(self)
end

-- The shared stream is gone (err: why); the hub re-creates the watch on the next one.
function Watch:_lost(err)
  if self.stream_down or self.closed or self.error then return end
  self.stream_down = true
  if self.stream_events then self:_push { { type = "disconnected", error = err } } end
end

function Watch:_push(events)
  local q, t = self.q, self.qt
  for i = 1, #events do
    t = t + 1
    q[t] = events[i]
  end
  self.qt = t
  if t - self.qh + 1 >= self.buffer and (self.state == "active" or self.group) then self.hub:pause(self) end
  wake_readers(self)
end

function Watch:_progress(rev)
  if not self.progress then return end
  self:_push { { type = "progress", revision = rev } }
end

function Watch:_fail(err)
  if self.closed or self.error then return end
  self.error = err
  self.state = "failed"
  self.hub:remove(self)
  wake_readers(self)
end

-- Whether a paused watch has room again (its queue is down to half its bound).
function Watch:_caught_up()
  return self.qt - self.qh + 1 <= self.buffer // 2
end

---------------------------------------------------------------------------------------------
-- public

local function cancel_read(r)
  local rs = r.watch.readers
  for i = 1, #rs do
    if rs[i] == r then
      table.remove(rs, i)
      break
    end
  end
end

local function await(self)
  local r = sched.waiter(cancel_read)
  r.watch = self
  self.readers[#self.readers + 1] = r
  sched.wait(r)
end

--- The next event, waiting for it: an event table; nil, err when the watch has failed
--- (after the events received before the failure); nil, "closed" error after close().
function Watch:next()
  while true do
    local h = self.qh
    if h <= self.qt then
      local ev = self.q[h]
      self.q[h] = nil
      self.qh = h + 1
      if self.qh > self.qt then self.qh, self.qt = 1, 0 end
      if self.state == "paused" and self:_caught_up() then self.hub:unpause(self) end
      self.revision = ev.revision or (ev.kv and ev.kv.mod_revision) or self.revision
      return ev
    end
    if self.error then return nil, self.error end
    if self.closed then return nil, errors.new("closed", "watch is closed") end
    await(self)
  end
end

--- Iterates over events: for ev in w:events() do ... end (or for ev in w do ... end). The
--- loop ends when the watch is closed or fails; the failure is then in w.error. Leaving the
--- loop leaves a watch held in a variable open: only a watch made in the for's own
--- expression (`for ev in etcd:watch(k)`) is closed with the loop.
function Watch:events()
  return function()
    return (self:next())
  end
end

--- A watch is its own iterator: `for ev in w do ... end` reads w:next().
function Watch:__call()
  return self:next()
end

--- Waits until the server has confirmed the watch; returns the revision it was created at
--- (its events are those after it, or from start_revision), or nil, err.
function Watch:ready()
  while true do
    if self.error then return nil, self.error end
    if self.closed then return nil, errors.new("closed", "watch is closed") end
    if self.created_revision then return self.created_revision end
    await(self)
  end
end

--- The number of events received and not yet read (#w).
function Watch:__len()
  return self.qt - self.qh + 1
end

--- Stops the watch: it is canceled on the server, queued events are dropped, and a reader
--- waiting in next() or events() stops (events() ends the loop; next() returns a "closed"
--- error). Closing twice does nothing.
function Watch:close()
  if self.closed then return end
  self.closed = true
  self.q, self.qh, self.qt = {}, 1, 0
  if not self.error then self.hub:remove(self) end
  wake_readers(self)
end
Watch.__close = Watch.close

return M
