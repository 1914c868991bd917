-- coord.consul.event_watch: consul.event:watch(name): every user event delivered once.
--
-- /v1/event/list answers with the agent's ring of recent events (the oldest fall out as new
-- ones come in), and its index is a hash of the newest event's ID, not a counter: an index
-- says only "the list changed". So the watch remembers the IDs of the list it read last and
-- delivers, from each new list, the events whose IDs it has not seen, oldest LTime first. The
-- blocking reads, their rate limit, backoff and closing are those of client:watch
-- (coord.consul.watch), which also drops a reply equal to the one before.

local args = require "coord.args"

local M = {}

local EventWatch = { __name = "coord.consul.event_watch" }
EventWatch.__index = EventWatch

local function ids(list)
  local seen = {}
  for _, e in ipairs(list) do seen[e.ID] = true end
  return seen
end

-- Queues the events of list not seen before, by LTime (ties in the agent's order).
local function take(self, list)
  local fresh = {}
  for i, e in ipairs(list) do
    if not self.seen[e.ID] then fresh[#fresh + 1] = { e = e, i = i } end
  end
  table.sort(fresh, function(a, b)
    if a.e.LTime ~= b.e.LTime then return a.e.LTime < b.e.LTime end
    return a.i < b.i
  end)
  for _, f in ipairs(fresh) do self.queue[#self.queue + 1] = f.e end
  self.seen = ids(list)
end

--- The next new event ({ID, Name, Payload, LTime, NodeFilter, ServiceFilter, TagFilter,
--- Version}), nil and the meta of the list it came in; nil when closed; nil, err when the
--- watch failed (also kept as w.error).
function EventWatch:next()
  while true do
    local q = self.queue
    if self.head <= #q then
      local e = q[self.head]
      q[self.head] = nil
      self.head = self.head + 1
      if self.head > #q then self.queue, self.head = {}, 1 end
      return e, nil, self.meta
    end
    if self.closed then return nil end
    if self.error then return nil, self.error end
    local list, err, meta = self.inner:next()
    if self.closed then return nil end
    if list == nil then
      self.error = self.inner.error or err
      return nil, self.error
    end
    self.meta = meta
    take(self, list)
  end
end

function EventWatch:__call()
  return self:next()
end

--- Stops the watch; a read in progress is abandoned.
function EventWatch:close()
  if self.closed then return end
  self.closed = true
  self.inner:close()
end
EventWatch.__close = EventWatch.close

--- The number of reads sent so far (the first list of from = "now" included).
function EventWatch:requests()
  return self.inner:requests() + self.baseline
end

local froms = { now = true, all = true }

--- event:watch(name, opts). from = "now" (the default) reads the list at once and delivers
--- only events that were not in it; "all" delivers the events the agent still holds first.
--- The other opts are those of client:watch (rate, burst, wait, retry, ...) and of
--- event:list (token, dc, ...).
function M.new(event, name, opts)
  args.check(name, "string", 1, "watch", true)
  opts = args.opts(opts, 2, "watch")
  local from = args.option(opts, "from", "string", "watch") or "now"
  if not froms[from] then error("bad option 'from' to 'watch' (\"now\" or \"all\" expected, got " .. ("%q"):format(from) .. ")", 2) end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.from, o.name = nil, name
  local self = setmetatable({ queue = {}, head = 1, seen = {}, baseline = 0 }, EventWatch)
  if from == "now" then
    self.baseline = 1
    local list, err, meta = event:list(o)
    if list == nil then
      self.error = err
    else
      self.seen, self.meta = ids(list), meta
    end
  end
  self.inner = event.client:watch(function(wo) return event:list(wo) end, o)
  return self, nil, nil, self
end

args.methods(EventWatch)

return M
