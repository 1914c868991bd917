-- coord.consul.session: Consul sessions (create, renew, destroy, info, list, node) and a
-- session that renews itself until it is closed; also the "lost" signal locks share.

local sched = require "coord.sched"
local core = require "coord.core"
local errors = require "coord.errors"
local consul = require "coord.consul"
local hold = require "coord.hold"
local url = require "coord.url"
local args = require "coord.args"

local uuid, segment = url.uuid, url.segment

local M = {}

local now = core.now


---------------------------------------------------------------------------------------------
-- durations: seconds (floats) on the Lua side, Go duration strings on the wire

local units = { ns = 1e-9, us = 1e-6, ["µs"] = 1e-6, ms = 1e-3, s = 1, m = 60, h = 3600 }

--- Seconds in a Go duration string ("15s", "1m30s", "150ms"); nil for "" or garbage.
function M._parse_duration(s)
  if type(s) ~= "string" or s == "" then return nil end
  local total, rest = 0, s
  while rest ~= "" do
    local num, unit, tail = rest:match("^([%d%.]+)([^%d%.]+)(.*)$")
    if not num or not units[unit] or not tonumber(num) then return nil end
    total, rest = total + tonumber(num) * units[unit], tail
  end
  return total
end

-- "15s" for whole seconds, else milliseconds ("10500ms"), which Consul and Go both parse.
local function duration(s)
  if s == math.floor(s) then return ("%ds"):format(s) end
  return ("%dms"):format(math.floor(s * 1000 + 0.5))
end
M._duration = duration

---------------------------------------------------------------------------------------------
-- the "lost" signal shared by self-renewing sessions, locks and semaphores (the helpers
-- from here to "the endpoints", and hold/left below, are for coord.consul.lock and
-- coord.consul.semaphore, not a public API)

--- Marks obj lost with err (once): sets obj.lost, wakes obj:wait_lost() callers and calls
--- obj.on_lost(err, obj) if set (its errors go to the coroutine error handler).
function M._lose(obj, err)
  if obj.lost or obj.ended then return end
  obj.lost = err
  hold.stop(obj.monitor)
  M._finish(obj)
  if obj.on_lost then obj.on_lost(err, obj) end
end

-- Ends obj's life (lost or released): wakes everyone in wait_lost.
function M._finish(obj)
  obj.ended = true
  local ws = obj.lost_waiters or {}
  obj.lost_waiters = nil
  for _, w in ipairs(ws) do sched.wake(w) end
end

--- Waits until obj is lost (returns nil and the "lost" error) or released (returns true).
function M._wait_lost(obj)
  if not obj.ended then
    local w = sched.waiter(function(w)
      for i, x in ipairs(obj.lost_waiters or {}) do
        if x == w then table.remove(obj.lost_waiters, i) break end
      end
    end)
    obj.lost_waiters = obj.lost_waiters or {}
    obj.lost_waiters[#obj.lost_waiters + 1] = w
    sched.wait(w)
  end
  if obj.lost then return nil, obj.lost end
  return true
end

--- The index for the next blocking read: reset when it went backwards, never below 1.
function M._next_index(old, new)
  if math.type(new) ~= "integer" then return nil end
  if old and new < old then return nil end
  return math.max(new, 1)
end

--- Watches that obj (a lock or semaphore slot) is still held, until it is lost. read(index)
--- does one blocking read and returns held (boolean), nil and the meta table, or nil, err.
--- Read errors are retried every second; after a whole TTL (obj.ttl) without a successful
--- read the slot is reported lost too, as its session has likely expired by then.
function M._monitor(obj, read)
  local index, last = nil, now()
  while true do
    local held, err, meta = read(index)
    if held then
      index, last = M._next_index(index, meta.index), now()
    elseif held == false then
      return M._lose(obj, errors.new("lost", obj.what .. " is no longer held"))
    elseif now() - last >= obj.ttl then
      return M._lose(obj, errors.new("lost", obj.what .. " not confirmed for its session TTL: " .. tostring(err),
        { cause = err }))
    else
      index = nil
      sched.sleep(1)
    end
  end
end

---------------------------------------------------------------------------------------------
-- the endpoints

local Sessions = { __name = "coord.consul.sessions" }
Sessions.__index = Sessions

function M.new(client)
  return setmetatable({ client = client }, Sessions)
end

-- A Lua array for the JSON encoder, also when empty (Consul reads [] as "no checks").
local function array(t)
  local a = setmetatable({}, { __jsontype = "array" })
  for i, v in ipairs(t) do a[i] = v end
  return a
end

-- Session JSON -> plain table with seconds.
local function entry(e)
  if type(e) ~= "table" then return nil end
  local delay = e.LockDelay
  return {
    id = e.ID, name = e.Name, node = e.Node, behavior = e.Behavior,
    ttl = M._parse_duration(e.TTL),
    lock_delay = math.type(delay) == "integer" and delay / 1e9 or M._parse_duration(delay),
    checks = consul._value(e.Checks), node_checks = consul._value(e.NodeChecks),
    service_checks = consul._value(e.ServiceChecks),
    create_index = e.CreateIndex, modify_index = e.ModifyIndex,
  }
end
M._entry = entry

local function check_ttl(v, i, fname, what)
  if v ~= nil and (type(v) ~= "number" or v < 0) then
    error(("bad argument #%d to '%s' (%s: non-negative number of seconds expected, got %s)")
      :format(i, fname, what, tostring(v)), 3)
  end
end

local CREATE_RETRY = 5 -- seconds create retries the 500s of an agent not yet registered

-- The two 500s of a freshly started agent whose node (or its serfHealth check) is not in
-- the catalog yet.
local function unregistered(err)
  local text = err.status == 500 and tostring(err.body or err.message) or ""
  return text:find("Missing node registration", 1, true) ~= nil
    or text:find("Missing check 'serfHealth' registration", 1, true) ~= nil
end

--- Creates a session. opts: name, ttl (seconds, 10..86400), lock_delay (seconds; Consul's
--- default 15), behavior ("release" or "delete"), checks, node_checks, service_checks
--- (lists; an empty list means none, not even serfHealth), node, dc, token.
--- Returns the session ID, nil and the meta table (nil, err on failure). The 500s of an agent whose node is not
--- registered yet ("Missing node registration", "Missing check 'serfHealth' registration")
--- are retried for up to 5 s.
function Sessions:create(opts)
  opts = args.opts(opts, 1, "create")
  check_ttl(opts.ttl, 1, "create", "ttl")
  check_ttl(opts.lock_delay, 1, "create", "lock_delay")
  local body = {
    Name = opts.name, Node = opts.node, Behavior = opts.behavior,
    TTL = opts.ttl and duration(opts.ttl),
    LockDelay = opts.lock_delay and duration(opts.lock_delay),
    Checks = opts.checks and array(opts.checks),
    NodeChecks = opts.node_checks and array(opts.node_checks),
    ServiceChecks = opts.service_checks and array(opts.service_checks),
  }
  local deadline, backoff = now() + CREATE_RETRY, sched.backoff(0.1, 1)
  while true do
    local res, err, meta = self.client:_write("/v1/session/create", body, opts)
    if res then return res.ID, nil, meta end
    -- refused, not applied: a new agent has a leader before its node is registered
    if not (unregistered(err) and now() < deadline) then return nil, err end
    sched.sleep(math.min(backoff:delay(), math.max(deadline - now(), 0)))
  end
end

--- Renews a session's TTL. Returns the session entry (its ttl may have been raised by the
--- server), nil and the meta; or nil and a "lost" error (status 404) when it no longer exists.
function Sessions:renew(id, opts)
  args.check(id, "string", 1, "renew")
  opts = args.opts(opts, 2, "renew")
  local o = consul._call_opts(opts, nil, "renew")
  o.ok, o.raw = { 404 }, true -- the 404 body is plain text
  local res, err = self.client:_call("PUT", "/v1/session/renew/" .. uuid(id, 1, "renew"), o)
  if not res then return nil, err end
  local list = res.status == 200 and core.json_decode(res.body or "")
  local e = type(list) == "table" and entry(list[1])
  if not e then
    return nil, errors.new("lost", "session " .. id .. " expired or was destroyed", { status = res.status })
  end
  return e, nil, res.meta
end

--- Destroys a session (its locks are released or deleted per its behavior). Returns true,
--- nil and the meta; destroying an unknown session also succeeds.
function Sessions:destroy(id, opts)
  args.check(id, "string", 1, "destroy")
  opts = args.opts(opts, 2, "destroy")
  local ok, err, meta = self.client:_write("/v1/session/destroy/" .. uuid(id, 1, "destroy"), nil, opts)
  if not ok then return nil, err end
  return true, nil, meta
end

-- GET a list of sessions, blocking when opts.index is given.
local function query(self, path, opts)
  local list, err, meta = self.client:_read(path, opts)
  if err then return nil, err end
  local out = {}
  for i, e in ipairs(type(list) == "table" and list or {}) do out[i] = entry(e) end -- null: none
  return out, nil, meta
end

--- The session's entry, nil and the meta; nil, nil, meta when it does not exist. opts: index,
--- wait, stale, consistent, dc, token.
function Sessions:info(id, opts)
  args.check(id, "string", 1, "info")
  local list, err, meta = query(self, "/v1/session/info/" .. uuid(id, 1, "info"), args.opts(opts, 2, "info"))
  if err then return nil, err end
  return list[1], nil, meta
end

--- All sessions (an array of entries), nil and the meta. opts as for info.
function Sessions:list(opts)
  return query(self, "/v1/session/list", args.opts(opts, 1, "list"))
end

--- The sessions of one node, nil and the meta. opts as for info.
function Sessions:node(node, opts)
  args.check(node, "string", 1, "node")
  return query(self, "/v1/session/node/" .. segment(node, 1, "node"), args.opts(opts, 2, "node"))
end

---------------------------------------------------------------------------------------------
-- a session that renews itself

local Session = { __name = "coord.consul.session" }
Session.__index = Session
Session.wait_lost = M._wait_lost

--- Creates a session (opts as for create; ttl defaults to 15 s) and keeps it alive in a
--- background task (renewed every TTL/2, retried until a whole TTL has passed since the
--- last success) until :close(). opts.on_lost(err, session) is called if renewal fails.
--- Returns the session object (id, ttl, lost, close, wait_lost) or nil, err. A caller
--- canceled while the create request is in flight destroys the session once it exists.
function Sessions:open(opts)
  opts = args.opts(opts, 1, "open")
  local o = setmetatable({ ttl = opts.ttl or 15 }, { __index = opts })
  local dopts = { token = opts.token, dc = opts.dc }
  local id, err = hold.shield(self.create, function(gone)
    if gone then self:destroy(gone, dopts) end
  end, self, o)
  if not id then return nil, err end
  local s = setmetatable({ id = id, ttl = o.ttl, sessions = self, opts = opts, on_lost = opts.on_lost }, Session)
  s.renewal = hold.renewal {
    ttl = s.ttl, every = 2, what = "session " .. id,
    renew = function(left)
      local e, rerr = self:renew(id, { token = opts.token, dc = opts.dc, timeout = left })
      if not e then return nil, rerr end
      s.ttl = e.ttl or s.ttl
      return s.ttl
    end,
    lost = function(lerr) M._lose(s, lerr) end,
  }
  s.task = s.renewal.task
  return s
end

--- Stops renewing and destroys the session, from any context. Returns true, or nil, err if
--- the destroy request failed (the session then expires after its TTL). Where the caller
--- cannot wait (a coroutine being closed, a task being canceled), the destroy runs in a task
--- of its own and close returns true. Closing twice does nothing.
function Session:close()
  if self.closed then return true end
  self.closed = true
  self.renewal:stop()
  M._finish(self)
  return hold.cleanup(self.sessions.destroy, self.sessions, self.id, { token = self.opts.token, dc = self.opts.dc })
end

function Session:__close()
  self:close()
end

--- For locks and semaphores: takes opts.session (an ID the caller keeps alive) or opens a
--- self-renewing session (opts.ttl, opts.lock_delay, opts.session_name or defaults.name,
--- defaults.behavior) whose loss marks obj lost. Sets obj.session, obj.keeper, obj.ttl.
function M._hold(client, obj, opts, defaults)
  obj.ttl = opts.ttl or 15
  if opts.session then
    obj.session = opts.session
    return true
  end
  local keeper, err = M.new(client):open {
    name = opts.session_name or defaults.name, ttl = obj.ttl, lock_delay = opts.lock_delay,
    behavior = defaults.behavior, token = opts.token, dc = opts.dc,
    on_lost = function(e) M._lose(obj, e) end,
  }
  if not keeper then return nil, err end
  obj.session, obj.keeper = keeper.id, keeper
  return true
end

--- The seconds left before deadline (math.huge without one).
function M._left(deadline)
  return deadline and deadline - now() or math.huge
end

args.methods(Sessions)
args.methods(Session)

return M
