-- coord.consul.watch: blocking-query loops: the watch iterator, and one prefix query shared by
-- many key watches.
--
-- A poller runs one blocking read after another by Consul's three rules: an index that goes
-- backwards is reset to 0 (the next read returns at once), an index below 1 is sent as 1, and
-- reads are taken from a token bucket (`rate` per second, `burst` at most), so a value that
-- changes all the time cannot make the loop hammer the agent. Network errors, 5xx and 429 are
-- retried with exponential backoff and jitter (or, with retry = false, end the watch like
-- other errors do: watch.error).
--
-- After an index reset (the index went backwards, or a read failed: the agent may have
-- restarted with fresh indexes, or been restored from a snapshot) indexes say nothing: a key
-- rewritten after the reset can carry the very ModifyIndex the watch last saw. A key watch
-- then compares what entries hold (key, value, flags, session) instead of their indexes.
--
-- Shared prefix queries: a client keeps a registry of prefix queries keyed by prefix and the
-- options that change the answer (token, dc, consistency, ns, partition). A key watch made with
-- `share` joins the query of its prefix (starting it for the first watcher), takes the entry of
-- its own key from each answer and wakes only when that entry changed. The query stops when its
-- last watcher closes. So W key watches under one prefix cost one connection, not W.
-- The same machinery (M.shared) serves other reads whose identical watches share one query,
-- such as services_watch (coord.consul.discovery).

local coord = require "coord"
local sched = require "coord.sched"
local errors = require "coord.errors"

local M = {}

local function same(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, v in pairs(a) do
    if not same(v, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

-- Whether two kv watch values (an entry, a list of entries, a raw string or false) hold the
-- same: with indexes unless after_reset, when only what the entries hold counts.
local function same_kv(a, b, after_reset)
  if not after_reset then return same(a, b) end
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  if a.key ~= nil or b.key ~= nil then
    return a.key == b.key and a.value == b.value and a.flags == b.flags and a.session == b.session
  end
  if #a ~= #b then return false end
  for i = 1, #a do
    if not same_kv(a[i], b[i], true) then return false end
  end
  return true
end

---------------------------------------------------------------------------------------------
-- jobs: a function run in its own task, so that another coroutine can abandon it

local function abandon(job)
  job.abandoned = true
  if job.running then
    job.running = false
    job.task:cancel()
  end
end

-- Starts fn() in a task; done(...) gets its results unless the job is abandoned first.
local function start(fn, done)
  local job = {}
  job.task = coord.spawn(function()
    if job.abandoned then return end
    job.running = true
    local function finish(...)
      job.running = false
      if done then done(...) end
    end
    finish(fn())
  end)
  return job
end

-- Runs fn() as a job and waits for its results; self:close() (or closing the waiting
-- coroutine) abandons it and the wait returns nothing.
local function run(self, fn)
  local job
  local w = sched.waiter(function() abandon(job) end)
  job = start(fn, function(...) sched.wake(w, table.pack(...)) end)
  self.job, self.w = job, w
  local r = sched.wait(w)
  self.job, self.w = nil, nil
  if r then return table.unpack(r, 1, r.n) end
end

---------------------------------------------------------------------------------------------
-- the poller

local function poller(fetch, opts)
  local rate, burst = opts.rate or 1, opts.burst or 5
  return { fetch = fetch, opts = opts, index = 0, hash = nil, wait = opts.wait or 300,
    rate = rate, burst = burst, tokens = burst, stamp = coord.now(), requests = 0,
    backoff = sched.backoff(opts.min_backoff or 0.1, opts.max_backoff or 30) }
end

-- Takes a token from the bucket, sleeping until there is one.
local function take(p)
  local now = coord.now()
  p.tokens = math.min(p.burst, p.tokens + (now - p.stamp) * p.rate)
  p.stamp = now
  if p.tokens < 1 then
    coord.sleep((1 - p.tokens) / p.rate)
    p.tokens, p.stamp = 1, coord.now()
  end
  p.tokens = p.tokens - 1
end

local function retryable(err)
  return not err.status or err.status == 429 or err.status >= 500
end

local function backoff(p)
  coord.sleep(p.backoff:delay())
end

-- One successful read (false for an absent value), nil and its meta; or nil, err for an
-- error that retrying cannot fix (or any error, with opts.retry == false). p.after_reset tells
-- whether the read returned is the first after an index reset.
local function poll(p)
  while true do
    take(p)
    p.requests = p.requests + 1
    local o = { wait = p.wait, retries = 0 } -- the loop backs off itself
    if p.hash then o.hash = p.hash elseif p.index ~= 0 then o.index = p.index end
    local v, err, meta = p.fetch(o)
    if err ~= nil then
      if not errors.is(err) then -- a function written for the old value, meta shape
        return nil, errors.new("invalid", "the watched function returned a second value that is not an error: "
          .. tostring(err) .. " (return value, err, meta)")
      end
      -- The agent may have restarted with fresh indexes: a blocking read with an index above
      -- its own would wait the whole `wait` before rule 1 could notice. Read once without
      -- blocking instead; an unchanged answer is not delivered again.
      p.index, p.hash, p.reset = 0, nil, true
      if not retryable(err) or p.opts.retry == false then return nil, err end
      backoff(p)
    else
      p.backoff:reset()
      local index = meta and meta.index or 0
      -- indexes are uint64: compared unsigned (event list indexes pass 2^63)
      if math.ult(index, p.index) then
        p.index, p.reset = 0, true
      else
        p.index = index ~= 0 and index or 1
      end
      p.hash = meta and meta.content_hash
      p.after_reset, p.reset = p.reset, false
      if v == nil then v = false end
      return v, nil, meta
    end
  end
end

---------------------------------------------------------------------------------------------
-- the watch iterator

local Watch = { __name = "coord.consul.watch" }
Watch.__index = Watch

-- Delivers v unless it equals the last value delivered. After an index reset a kv watch
-- compares contents: an equal value under new indexes is taken in silently, so that the
-- next comparison is against the new indexes.
local function changed(self, v, after_reset)
  if self.delivered then
    if self.kv then
      if same_kv(v, self.last, after_reset) then
        self.last = v
        return false
      end
    elseif same(v, self.last) then
      return false
    end
  end
  self.delivered, self.last = true, v
  return true
end

--- The next changed value (false when absent), nil and its meta; nil, err when the watch
--- failed (also kept in watch.error); nil when it is closed.
function Watch:next()
  while not self.closed do
    local v, err, meta = run(self, function() return poll(self.p) end)
    if self.closed then return nil end
    if v == nil then
      self.error = err
      return nil, err
    end
    if changed(self, v, self.p.after_reset) then return v, nil, meta end
  end
  return nil
end

function Watch:__call()
  return self:next()
end

--- Stops the watch: a read in progress is abandoned and the loop ends.
function Watch:close()
  if self.closed then return end
  self.closed = true
  if self.job then
    abandon(self.job)
    sched.wake(self.w)
  end
end
Watch.__close = Watch.close

--- The number of reads sent so far.
function Watch:requests()
  return self.p.requests
end

-- Raises for a bad retry, rate, burst or wait option, blaming the function level frames up
-- (default 4: the caller of the function calling the one that checks).
local function check_rate(opts, level, fname)
  level, fname = level or 4, fname or "watch"
  if opts.retry ~= nil and type(opts.retry) ~= "boolean" then
    error("bad option 'retry' to '" .. fname .. "' (boolean expected, got " .. type(opts.retry) .. ")", level)
  end
  for _, k in ipairs { "rate", "burst", "wait" } do
    local v = opts[k]
    if v ~= nil and (type(v) ~= "number" or v <= 0) then
      error("bad option '" .. k .. "' to '" .. fname .. "' (positive number expected, got " .. tostring(v) .. ")", level)
    end
  end
end

local function merge(opts, o)
  local m = {}
  for k, v in pairs(opts) do m[k] = v end
  for k, v in pairs(o) do m[k] = v end
  return m
end

local function iterator(w)
  return w, nil, nil, w
end

local function new_watch(read, opts, kv)
  local w = setmetatable({ kv = kv }, Watch)
  w.p = poller(function(o) return read(merge(opts, o)) end, opts)
  return iterator(w)
end

--- A watch over any blocking read: fn(opts) gets opts with index/hash/wait added and
--- returns value, err, meta (the 0.2 convention; a nil value with no error is absent).
function M.new(_, fn, opts)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'watch' (function expected, got " .. type(fn) .. ")", 3)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #2 to 'watch' (table or nil expected, got " .. type(opts) .. ")", 3)
  end
  opts = opts or {}
  check_rate(opts)
  return new_watch(fn, opts)
end

---------------------------------------------------------------------------------------------
-- shared prefix queries

local Sub = { __name = "coord.consul.shared_watch" }
Sub.__index = Sub

-- The registry key of a query: its name and the options that change the answer (those of
-- every read, then the names in more).
local function group_key(name, opts, more)
  local parts = { name }
  for _, k in ipairs { "token", "dc", "consistency", "stale", "consistent", "ns", "partition" } do
    parts[#parts + 1] = tostring(opts[k])
  end
  for _, k in ipairs(more or {}) do parts[#parts + 1] = tostring(opts[k]) end
  return table.concat(parts, "\0")
end

-- The group's loop: one blocking list of the prefix after another, each answer handed to
-- the watchers that wait.
local function group_loop(g)
  while true do
    local list, err, meta = poll(g.p)
    if list and g.p.after_reset then g.reset_version = g.version + 1 end
    if list == nil then
      g.error = err
      if g.registry[g.key] == g then g.registry[g.key] = nil end
    else
      g.value, g.meta = g.digest(list), meta
      g.version = g.version + 1
    end
    for sub in pairs(g.subs) do
      if sub.w then sched.wake(sub.w) end
    end
    if list == nil then return end
  end
end

-- The group of client's registry under key, started with fetch (a poller's read) when it is
-- new; digest(answer) makes what its watchers pick their values from.
local function join(client, key, fetch, digest, opts)
  local registry = client._shared
  local g = registry[key]
  if not g then
    g = { subs = {}, n = 0, version = 0, registry = registry, key = key, digest = digest }
    g.p = poller(fetch, opts)
    g.job = start(function() group_loop(g) end)
    registry[key] = g
  end
  return g
end

-- A watcher of group g: pick(g.value) is its value; kv says values are kv entries.
local function subscribe(g, pick, kv)
  local sub = setmetatable({ g = g, pick = pick, seen = 0, kv = kv }, Sub)
  g.subs[sub] = true
  g.n = g.n + 1
  return iterator(sub)
end

--- The next change of this watcher's value (a kv watch: the key's entry, false when
--- absent), nil and the meta of the shared read; nil, err when the shared query failed;
--- nil when closed.
function Sub:next()
  local g = self.g
  while not self.closed do
    if g.version > self.seen then
      local after_reset = (g.reset_version or 0) > self.seen
      self.seen = g.version
      local v = self.pick(g.value)
      if changed(self, v, after_reset) then return v, nil, g.meta end
    elseif g.error then
      self.error = g.error
      return nil, g.error
    else
      self.w = sched.waiter(function(w) if self.w == w then self.w = nil end end)
      sched.wait(self.w)
      self.w = nil
    end
  end
  return nil
end

Sub.__call = Sub.next

--- Leaves the shared query (stopping it when this was its last watcher).
function Sub:close()
  if self.closed then return end
  self.closed = true
  local g = self.g
  g.subs[self] = nil
  g.n = g.n - 1
  if g.n == 0 then
    abandon(g.job)
    if g.registry[g.key] == g then g.registry[g.key] = nil end
  end
  if self.w then sched.wake(self.w) end
end
Sub.__close = Sub.close

function Sub:requests()
  return self.g.p.requests
end

-- A prefix list as a table of its entries by key.
local function by_key(list)
  local byk = {}
  for _, e in ipairs(list) do byk[e.key] = e end
  return byk
end

M.check_rate = check_rate

--- A watch on the query named name (with the options in more telling identical watches apart)
--- (its options checked with check_rate first) shared by every identical watch of client:
--- fetch(opts) is the poller's read (opts with index/hash/wait added; value, nil, meta or
--- nil, err), digest(value) what each answer is turned into once; each watcher's value is the
--- digest (compared in full for changes), yielded as value, nil, meta.
function M.shared(client, name, opts, more, fetch, digest)
  local g = join(client, group_key(name, opts, more), function(o) return fetch(merge(opts, o)) end, digest, opts)
  return subscribe(g, function(v) return v end, false)
end

--- kv:watch(key, opts): the key's entry (false when absent), or with recurse = true the
--- entries under the prefix; with share (a prefix of key, or true for the key's parent
--- "directory"), the key's entry taken from a prefix query shared with other watches.
function M.kv(kv, key, opts)
  check_rate(opts)
  local share = opts.share
  if share then
    if share == true then share = key:match("^(.*/)") or "" end
    if type(share) ~= "string" or key:sub(1, #share) ~= share then
      error("bad option 'share' to 'watch' (a prefix of the key expected, got " .. tostring(share) .. ")", 3)
    end
    local o = merge(opts, {})
    o.share, o.recurse, o.raw = nil, nil, nil
    local g = join(kv.client, group_key(share, o), function(r) return kv:list(share, merge(o, r)) end, by_key, o)
    local raw = opts.raw
    return subscribe(g, function(byk)
      local e = byk[key] or false
      if e and raw then return e.value end
      return e
    end, true)
  end
  local read = opts.recurse and kv.list or kv.get
  return new_watch(function(o) return read(kv, key, o) end, opts, true)
end

return M
