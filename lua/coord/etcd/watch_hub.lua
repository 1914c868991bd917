-- coord.etcd.watch_hub: one multiplexed /v3/watch stream per client carrying all its watches;
-- it reconnects to the next endpoint and re-creates every watch where it left off.

local core = require "coord.core"
local sched = require "coord.sched"
local http = require "coord.http"
local errors = require "coord.errors"
local proto = require "coord.etcd.proto"

local M = {}

local json_encode = core.json_encode
local int = proto.int

-- The first id the hub asks for. etcd's grpc-proxy ignores the id of a create and numbers a
-- stream's watches itself, from 0 up: starting far above, the hub can tell the proxy's
-- numbers from its own.
local ID_BASE = 1 << 32

local Hub = { __name = "coord.etcd.watch_hub" }
Hub.__index = Hub

-- Read-ahead of the shared stream; past it the transfer pauses until the hub catches up
-- (the hub never blocks on a slow watch, so this only bounds one burst).
local STREAM_BUFFER = 4 << 20
local BACKOFF_MIN, BACKOFF_MAX = 0.05, 5
M.KEEPALIVE = 10
-- seconds a new stream has to answer its creates (see keepalive)
M.OPEN_GRACE = 5
-- Over TLS the stream shares the requests' HTTP/2 connection when this is set, else it uses
-- HTTP/1.1 on a connection of its own: sharing stalls with libcurl 7.88, not with 8.14
-- under the load of spec/etcd_tls_mux_spec.lua (see doc/etcd-watch.md).
M.HTTP2 = (tonumber(tostring(core.versions.libcurl):match("^(%d+)")) or 0) >= 8

--- The client's hub, made on first use.
function M.of(client)
  local hub = rawget(client, "_watch_hub")
  if not hub then
    local wire = client.grpc and client.grpc.watch_wire or M.json_wire -- the transport's, once
    hub = setmetatable({ client = client, watches = {}, byid = {}, pending = { head = 1, tail = 1 }, count = 0, next_id = ID_BASE,
      groups = {}, locals = 0,
      wire = wire, deferred = {}, honors = wire.honors_ids,
      counts = { streams = 0, results = 0, fragments = 0, pauses = 0, probes = 0, progress = 0 } }, Hub)
    rawset(client, "_watch_hub", hub)
  end
  return hub
end

--- Counters for monitoring: watches (the client's), server_watches (the watches created on
--- the server: identical watches share one), connected (endpoint URL or nil), streams opened,
--- results read, fragments reassembled, pauses of slow watches, probes sent, progress
--- replies read.
function Hub:stats()
  local c = self.counts
  return { watches = self.locals, server_watches = self.count, connected = self.stream and self.target.endpoint or nil,
    streams = c.streams, results = c.results, fragments = c.fragments, pauses = c.pauses,
    probes = c.probes, progress = c.progress, last_error = self.last_error }
end

---------------------------------------------------------------------------------------------
-- requests on the stream

local function send(hub, msg)
  local s = hub.stream
  if not s then return false end
  return hub.wire.send(s, msg)
end

-- Sends a create_request for w under a fresh id (ids are never reused: etcd refuses a
-- duplicate with watch_id -1, which could not be told apart), from w.next_rev when known,
-- or from the revision progress replies have vouched for (w.safe), if that is later.
-- etcd answers creates in order, under the id asked for; etcd's grpc-proxy numbers them
-- itself and may answer them out of order (each waits for its own upstream watch). So until
-- a stream's first answer shows the server keeps the ids asked for (hub.honors), and for
-- ever on a stream that does not, one create is out at a time: the others wait, in order,
-- in hub.deferred, and each answer belongs to the one create out.
local function create(hub, w)
  local p = hub.pending
  if not hub.honors and p.head ~= p.tail then
    local d = hub.deferred
    d[#d + 1] = w
    w.state = "pending"
    return
  end
  local id = hub.next_id
  hub.next_id = id + 1
  w.id, w.frag, w.cand = id, nil, nil
  if w.safe and w.safe > (w.next_rev or 0) then w.next_rev = w.safe end
  hub.byid[id] = w
  w.state = "creating"
  local req = w.req
  req.watch_id = id
  req.start_revision = w.next_rev
  p[p.tail] = { id, w }
  p.tail = p.tail + 1
  send(hub, { create_request = req })
end
M.create = create

local function cancel(hub, w)
  local id = w.id
  if id then
    hub.byid[id] = nil
    w.id, w.frag, w.cand = nil, nil, nil
    send(hub, { cancel_request = { watch_id = id } })
  end
end

---------------------------------------------------------------------------------------------
-- shared watches: identical watches of one client (same create_request, no start revision)
-- are the members of one Group, which the hub treats as a watch: it is created, resumed and
-- canceled on the server once, and hands each result to every member.

local Group = { __name = "coord.etcd.watch_group" }
Group.__index = Group

-- The identity of a create_request (without watch_id and start_revision).
local function signature(req)
  local f = req.filters and table.concat(req.filters, ",") or ""
  return table.concat({ req.key, req.range_end or "", req.prev_kv and "p" or "", req.progress_notify and "n" or "",
    req.fragment and "f" or "", f }, "\0")
end

local function members(g)
  local list = {}
  for m in pairs(g.members) do list[#list + 1] = m end
  return list
end

-- Each member gets events of its own (a reader may change the tables it is given).
local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

local function copy_event(ev)
  local c = copy(ev)
  if ev.kv then c.kv = copy(ev.kv) end
  if ev.prev_kv then c.prev_kv = copy(ev.prev_kv) end
  return c
end

function Group:_created(rev)
  self.created, self.down = true, nil -- joinable without waiting from now on
  for _, m in ipairs(members(self)) do m:_created(rev) end
end

function Group:_lost(err)
  self.down = true
  for _, m in ipairs(members(self)) do m:_lost(err) end
end

function Group:_push(events)
  local first = true
  for _, m in ipairs(members(self)) do
    if first then
      m:_push(events)
      first = false
    else
      local c = {}
      for i = 1, #events do c[i] = copy_event(events[i]) end
      m:_push(c)
    end
  end
end

function Group:_progress(rev)
  for _, m in ipairs(members(self)) do m:_progress(rev) end
end

-- The server canceled or refused the shared watch: every member fails with err.
function Group:_fail(err)
  if self.state == "failed" then return end
  self.state = "failed"
  local hub = self.hub
  if hub.groups[self.sig] == self then hub.groups[self.sig] = nil end
  local ms = members(self)
  for _, m in ipairs(ms) do
    self.members[m], m.group = nil, nil
    hub.locals = hub.locals - 1
  end
  self.n = 0
  hub:_drop(self)
  for _, m in ipairs(ms) do m:_fail(err) end
end

function Group:_caught_up() return true end

-- w joins g: from now on it gets every result g gets. Joining a watch the server has
-- already created, w is ready at once: every event after what g has delivered comes to it.
local function join(g, w)
  g.members[w], g.n, w.group = true, g.n + 1, g
  w.state = "shared"
  if g.created and g.next_rev then
    w.created_revision = g.next_rev - 1
  end
end

-- w leaves g; the last member to leave cancels the shared watch on the server.
local function leave(hub, g, w)
  if not g.members[w] then return end
  g.members[w], g.n, w.group = nil, g.n - 1, nil
  if g.n == 0 then
    if hub.groups[g.sig] == g then hub.groups[g.sig] = nil end
    hub:_drop(g)
  end
end

local function new_group(hub, w, sig)
  local req = {}
  for k, v in pairs(w.req) do req[k] = v end
  return setmetatable({ hub = hub, sig = sig, key = w.key, req = req, members = {}, n = 0, state = "new" }, Group)
end

-- Registers a server-side watch (a watch of its own or a group) and creates it on the
-- stream (starting the stream if needed).
function Hub:_register(w)
  self.watches[w] = true
  self.count = self.count + 1
  w.state = "pending"
  if self.stream then
    create(self, w)
  elseif not self.task then
    self.task = sched.spawn(M.run, self)
  end
end

--- Registers a new watch: a watch identical to one already on the stream (and without a
--- start revision) joins it, otherwise it is created on the server.
function Hub:add(w)
  local ka = w.keepalive or M.KEEPALIVE
  if not self.keepalive or ka < self.keepalive then self.keepalive = ka end
  self.locals = self.locals + 1
  if w.next_rev or w.share == false then return self:_register(w) end
  local sig = signature(w.req)
  local g = self.groups[sig]
  if g then return join(g, w) end
  g = new_group(self, w, sig)
  self.groups[sig] = g
  join(g, w)
  self:_register(g)
end

-- Forgets a server-side watch: cancels it on the server; the last one ends the stream.
function Hub:_drop(w)
  if not self.watches[w] then return end
  self.watches[w] = nil
  self.count = self.count - 1
  cancel(self, w)
  if self.count == 0 then self:stop() end
end

--- Forgets a watch (closed or failed): cancels it on the server (a shared one once its last
--- member has left); the last one ends the stream.
function Hub:remove(w)
  local g = w.group
  if g then
    self.locals = self.locals - 1
    return leave(self, g, w)
  end
  if not self.watches[w] then return end
  self.locals = self.locals - 1
  self:_drop(w)
end

--- Ends the stream and its task (used when no watch is left).
function Hub:stop()
  local t, s = self.task, self.stream
  self.task, self.stream = nil, nil
  if t and t:status() == "waiting" then
    t:cancel()
  elseif s then
    s:close() -- the running task sees the end and returns
  end
end

--- A watch paused for overflow takes events again once its reader has caught up.
function Hub:unpause(w)
  if self.stream and w.state == "paused" then create(self, w) end
end

--- Stops delivering to w until its reader catches up (see Watch buffer). A member of a
--- shared watch leaves it, so as not to hold the others up: it goes on alone, from where the
--- shared watch was, once caught up.
function Hub:pause(w)
  self.counts.pauses = self.counts.pauses + 1
  local g = w.group
  if g then
    w.next_rev, w.safe = g.next_rev, g.safe
    self.watches[w] = true
    self.count = self.count + 1
    leave(self, g, w)
    w.state = "paused"
    return
  end
  cancel(self, w)
  w.state = "paused"
end

-- Closes the current stream so that the task reconnects at once (a stale token).
function Hub:restart()
  local s = self.stream
  if s then
    self.restarting = true
    s:close()
  end
end

---------------------------------------------------------------------------------------------
-- results

-- One event of a result as the watch delivers it, read with its wire's kv reader and its
-- spelling of the type DELETE.
local function decode_event(wire, e, strip)
  local kv, prev = wire.kv, e.prev_kv
  return {
    type = e.type == wire.DELETE and "delete" or "put",
    kv = kv(e.kv or {}, strip),
    prev_kv = prev and kv(prev, strip) or nil,
  }
end

-- The error kind for a refused create, as the client names them.
local function refusal_kind(reason)
  if reason:find("permission denied", 1, true) then return "permission" end
  if reason:find("auth", 1, true) or reason:find("user name is empty", 1, true) then return "auth" end
  return "refused"
end

-- A refused create. An expired token ("invalid auth token") is renewed and the watch tried
-- again once on a new stream; any other refusal (permission denied, say) is the watch's error.
local function refused(hub, w, r)
  local reason = r.cancel_reason or "watch refused"
  hub.byid[w.id] = nil
  w.id = nil
  local kind = refusal_kind(reason)
  local token = hub.target and hub.target.token
  if kind == "auth" and token and not w.auth_retry then
    w.auth_retry = true
    w.state = "pending"
    hub.client:_auth_expired(token)
    return hub:restart()
  end
  w:_fail(errors.new(kind, reason:gsub("^rpc error: code = %a+ desc = ", ""), { key = w.key }))
end

local function canceled(hub, w, r)
  hub.byid[w.id] = nil
  w.id, w.frag = nil, nil
  local compact = int(r.compact_revision)
  if compact > 0 then
    return w:_fail(errors.new("compacted",
      ("required revision %d has been compacted (compact revision %d)"):format(w.next_rev or 0, compact),
      { compact_revision = compact, revision = w.next_rev, key = w.key }))
  end
  w:_fail(errors.new("lost", "watch canceled by the server: " .. (r.cancel_reason or "no reason given"),
    { key = w.key }))
end

-- The create answered by a `created` result. etcd answers creates in the order they were
-- sent, and a refusal carries watch_id -1 instead of the id asked for, so the answer belongs
-- to the oldest create still unanswered (behind a proxy: the only one, see create).
local function answered(hub, id)
  local p = hub.pending
  local h = p.head
  local entry = p[h]
  if not entry then return nil end
  local foreign = id ~= -1 and entry[1] ~= id
  if foreign and (hub.byid[id] or id >= ID_BASE) then return hub.byid[id] end -- not expected; trust the id
  if id ~= -1 and hub.honors == nil then hub.honors = not foreign end
  p[h] = nil
  p.head = h + 1
  local w = entry[2]
  if foreign then -- the proxy's number for the oldest create: the watch goes by it from now on
    if hub.byid[entry[1]] ~= w then -- closed or paused meanwhile, under the id the proxy never knew
      send(hub, { cancel_request = { watch_id = id } })
      return nil
    end
    hub.byid[entry[1]] = nil
    hub.byid[id], w.id = w, id
    return w
  end
  if hub.byid[entry[1]] ~= w then return nil end -- closed or paused meanwhile
  return w
end

-- A reply to the hub's progress_request: no watch id (-1), a header, nothing else. It says
-- that the stream has carried every event up to rev, but not always before the reply
-- itself: etcd 3.5 sends it only once all the stream's watchers have caught up, behind their
-- events, while etcd 3.4 answers at once with its current revision, so the reply can
-- overtake events that are still queued (or not yet read from history) for a watch. So rev
-- is only a candidate, one per live watch: it becomes the watch's resume revision (w.safe,
-- used when the watch is created again on another stream) at the next reply, unless an
-- event for the watch came in between. Watches whose create is still unanswered get no
-- candidate: the reply may predate them. Delivery on this stream never depends on it.
local function progress_all(hub, rev)
  hub.counts.progress = hub.counts.progress + 1
  for _, w in pairs(hub.byid) do
    if w.state == "active" then
      local cand = w.cand
      if cand and cand + 1 > (w.safe or 0) then w.safe = cand + 1 end
      w.cand = rev
    end
  end
end

-- After an answer: the deferred creates the stream can take now (see create).
local function flush(hub)
  local d, p = hub.deferred, hub.pending
  while d[1] and (hub.honors or p.head == p.tail) do
    local w = table.remove(d, 1)
    if hub.watches[w] and w.state == "pending" and not w.id then create(hub, w) end
  end
end

local function dispatch(hub, r)
  local id = int(r.watch_id)
  if r.created then
    local w = answered(hub, id)
    flush(hub)
    if not w then return end
    if r.canceled then return refused(hub, w, r) end
    w.state, w.auth_retry = "active", nil
    local rev = int(r.header and r.header.revision)
    if not w.next_rev then w.next_rev = rev + 1 end
    return w:_created(rev)
  end
  local evs = r.events
  if id == -1 then
    local rev = int(r.header and r.header.revision)
    if not evs and not r.canceled and rev > 0 then progress_all(hub, rev) end
    return
  end
  local w = hub.byid[id]
  if not w then return end -- canceled meanwhile (closed or paused)
  if r.canceled then return canceled(hub, w, r) end
  if evs then
    w.cand = nil
    local strip = #hub.client.prefix
    local frag = w.frag
    if r.fragment then hub.counts.fragments = hub.counts.fragments + 1 end
    if r.fragment or frag then
      frag = frag or {}
      for i = 1, #evs do frag[#frag + 1] = evs[i] end
      if r.fragment then
        w.frag = frag
        return
      end
      w.frag, evs = nil, frag
    end
    local out, last = {}, nil
    local from = w.next_rev or 0
    local wire = hub.wire
    for i = 1, #evs do
      local ev = decode_event(wire, evs[i], strip)
      local rev = ev.kv.mod_revision
      if rev >= from then -- older ones were delivered before a reconnect
        out[#out + 1] = ev
        if not last or rev > last then last = rev end
      end
    end
    if last then
      w.next_rev = last + 1
      w:_push(out)
    end
    return
  end
  -- progress: every event up to the header's revision has been sent
  local rev = int(r.header and r.header.revision)
  if rev > 0 and rev >= (w.next_rev or 0) then w.next_rev = rev + 1 end
  w:_progress(rev)
end

---------------------------------------------------------------------------------------------
-- the stream task

local function headers_for(target)
  local h = { ["Expect"] = "100-continue", ["Content-Type"] = "application/json" }
  for k, v in pairs(target.headers or {}) do h[k] = v end
  return h
end

-- The HTTP/1.1 stream over TLS is put apart from the calls' connections (address_scope,
-- see coord.http): with libcurl 7.88 it made every concurrent call open a connection of its
-- own. Not for a URL with an IPv6 zone, whose scope it must keep.
local function own_scope(target)
  if M.HTTP2 or target.http_version ~= "2tls" or target.url:find("%", 1, true) then return nil end
  return 1
end

-- The wire a hub speaks, chosen once per hub: open(target, buffer) -> stream (with close
-- and stats), send(stream, request) -> ok, read(stream) -> the next result (the gateway's
-- JSON shape, except for its events' kvs), or nil at the end, or nil, err; kv(kv, strip) ->
-- an event's kv as the watch delivers it; DELETE: how an event's type says delete. This one:
-- the JSON gateway's /v3/watch, a line of JSON each way; coord.etcd.grpc has the gRPC one.
local json_wire = { honors_ids = true, kv = proto.kv, DELETE = "DELETE" } -- honors_ids: etcd itself: the ids asked for (see create)
M.json_wire = json_wire

function json_wire.open(target, buffer)
  return http.stream {
    url = target.url .. "/v3/watch", method = "POST", upload = true,
    headers = headers_for(target), tls = target.tls,
    http_version = (M.HTTP2 or target.http_version ~= "2tls") and target.http_version or "1.1",
    pipewait = M.HTTP2 and target.pipewait or nil, buffer = buffer,
    address_scope = own_scope(target),
    unix_socket = target.unix_socket, connect_to = target.connect_to,
  }
end

function json_wire.send(s, msg)
  return s:write(json_encode(msg) .. "\n") ~= nil
end

function json_wire.read(s)
  return require("coord.etcd")._stream_result(s, "/v3/watch", "watch stream")
end

-- Reads results until the stream ends; returns the error that ended it and whether any
-- result came.
local function read_loop(hub, s)
  local read = hub.wire.read
  local got = false
  while true do
    local r, err = read(s)
    if not r then
      return err or errors.new("closed", "watch stream ended by the server"), got
    end
    hub.last_rx = core.now()
    got = true
    hub.counts.results = hub.counts.results + 1
    dispatch(hub, r)
  end
end

-- Probes the stream every hub.keepalive seconds with a progress_request, answered with a
-- header-only result; every line read refreshes hub.last_rx. A stream on which a probe has
-- stayed unanswered (nothing read since it was sent) for two intervals is closed, so that
-- the task reconnects elsewhere. etcd 3.5 does not answer a probe while none of the
-- stream's watches is live on the server (all paused for slow readers), so a probe only
-- waits for an answer while one is; nor is the stream silent while lines wait unread in its
-- buffer (the loop was busy elsewhere).
local function keepalive(hub, s)
  local asked -- when the oldest probe that nothing has been read after was sent
  -- A stream with creates out and no answer at all OPEN_GRACE s after it opened is given up:
  -- etcd answers a create at once, and libcurl was seen to leave a new stream unsent (a
  -- connection of its own that got only the HTTP/2 preface, after 40 lock contenders were
  -- canceled in one loop), where waiting for the probes would take three intervals.
  local grace = math.min(M.OPEN_GRACE, hub.keepalive)
  sched.sleep(grace)
  if hub.stream ~= s then return end
  local st = s:stats()
  if not st.answered and st.buffered == 0 and not st.done and hub.count > 0 then
    hub.dead = errors.new("timeout", ("watch stream unanswered %g s after it opened"):format(grace))
    if hub.wire.suspect then hub.wire.suspect(hub.target) end
    s:close()
    return
  end
  while hub.stream == s do
    local iv = hub.keepalive
    sched.sleep(math.max(iv - grace, 0)) -- (the first probe after one interval, as the rest)
    grace = 0
    if hub.stream ~= s then return end
    local now = core.now()
    if asked and (hub.last_rx >= asked or next(hub.byid) == nil or s:stats().buffered > 0) then asked = nil end
    if asked and now - asked > 2 * iv then
      hub.dead = errors.new("timeout", ("watch stream silent for %g s"):format(now - asked))
      -- its connection may be dead while libcurl holds it for alive: probe before the next
      if hub.wire.suspect then hub.wire.suspect(hub.target) end
      s:close()
      return
    end
    hub.counts.probes = hub.counts.probes + 1
    send(hub, { progress_request = {} })
    asked = asked or now
  end
end

local Prober = { __close = function(p)
  if p.task:status() == "waiting" then p.task:cancel() end
end }

-- After the stream is gone (err: why) no id is live; every watch not paused is re-created
-- on the next.
local function orphan(hub, err)
  hub.byid, hub.pending, hub.deferred, hub.honors = {}, { head = 1, tail = 1 }, {}, hub.wire.honors_ids
  for w in pairs(hub.watches) do
    w.id, w.frag, w.cand = nil, nil, nil
    if w.state ~= "paused" then w.state = "pending" end
    w:_lost(err)
  end
end

local function fail_all(hub, err)
  local ws = {}
  for w in pairs(hub.watches) do ws[#ws + 1] = w end
  for i = 1, #ws do ws[i]:_fail(err) end
end

--- The hub's task: connects, creates every watch, reads results; on failure moves to the
--- next endpoint and starts again. Ends when no watch is left.
function M.run(hub)
  local client = hub.client
  local backoff = sched.backoff(BACKOFF_MIN, BACKOFF_MAX)
  local me = coroutine.running()
  local function mine() return hub.count > 0 and hub.task ~= nil and hub.task.co == me end
  while mine() do
    local target, terr = client:_target()
    if not mine() then break end
    if not target then
      hub.last_error = terr
      if terr and terr.kind == "auth" then
        fail_all(hub, terr)
        break
      end
      sched.sleep(backoff:delay())
    else
      local s <close> = hub.wire.open(target, STREAM_BUFFER)
      hub.stream, hub.target, hub.restarting = s, target, nil
      hub.counts.streams = hub.counts.streams + 1
      for w in pairs(hub.watches) do
        if w.state == "pending" or (w.state == "paused" and w:_caught_up()) then create(hub, w) end
      end
      hub.last_rx, hub.dead = core.now(), nil
      -- the prober ends with the stream, also when this task is canceled
      local pinger <close> = setmetatable({ task = sched.spawn(keepalive, hub, s) }, Prober)
      local err, got = read_loop(hub, s)
      err = hub.dead or err
      hub.stream = nil
      s:close()
      orphan(hub, err)
      hub.last_error = err
      if not mine() then break end
      if hub.restarting then
        backoff:reset()
      else
        if err and err.kind == "auth" and target.token then
          client:_auth_expired(target.token)
        elseif err and err.kind ~= "canceled" then
          client:_failed(target.endpoint, err)
        end
        if got then backoff:reset() end
        sched.sleep(backoff:delay())
      end
    end
  end
  if hub.task and hub.task.co == me then hub.task = nil end
end

return M
