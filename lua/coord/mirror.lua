-- coord.mirror: a local table of every key under a prefix, kept current from etcd or Consul,
-- with a hook per change. One background task per mirror: a consistent snapshot first, then
-- the changes in order.
--
-- etcd: the snapshot is one range read in pages at one revision; then a watch from the next
-- revision. Events of one revision come as one batch. A compacted revision (the mirror fell
-- too far behind) takes a fresh snapshot and reports the keys that differ as changes.
-- Consul: a blocking list of the prefix (kv:watch with recurse, which follows the three
-- blocking-query rules); each listing is compared with the table by ModifyIndex, except the
-- first after a failed read or an index that went backwards: the agent may have restarted
-- and given rewritten keys the very indexes the table holds, so that one is compared by
-- content (value, flags, session).
--
-- Staleness: a failed read (Consul, or the etcd snapshot), a failed watch, or the watch's
-- shared stream going down (etcd: a "disconnected" stream event) makes the mirror stale at
-- once: synced = false, stale_since set, on_stale called. It is synced again after the next
-- successful listing or snapshot, or when the etcd watch is re-created on a new stream.
--
-- Snapshot file (opts.snapshot): a last-known-good copy of the raw table on disk, written
-- after changes (at most every snapshot_interval) and on close, and loaded when the first
-- read fails or has not succeeded within snapshot_after. The first live listing after a load
-- is compared by content, so only the keys that differ from the file are reported.

local coord = require "coord"
local sched = require "coord.sched"
local errors = require "coord.errors"
local core = require "coord.core"

local M = {}

local Mirror = { __name = "coord.mirror" }
Mirror.__index = Mirror

local function backend(client)
  if type(client) == "table" then
    if type(client.kv) == "table" and type(client.kv.list) == "function" then return "consul" end
    if type(client.range) == "function" and type(client.watch) == "function" then return "etcd" end
  end
  return nil
end

---------------------------------------------------------------------------------------------
-- applying changes

-- Calls a user hook; an error in it is reported like an error in a coroutine and does not
-- stop the mirror.
local function call_hook(self, fn, ...)
  local ok, err = xpcall(fn, debug.traceback, ...)
  if not ok then
    self.last_error = errors.new("hook", tostring(err))
    sched.report(err, coroutine.running(), err)
  end
end

-- The value stored for raw bytes: decoded when the mirror has a decoder. A value that does
-- not decode keeps the key's previous value and is recorded as the last error.
local function decoded(self, key, raw)
  if not self.decode then return true, raw end
  local ok, v, err = pcall(self.decode, raw)
  if ok and v ~= nil then return true, v end
  self.last_error = errors.new("decode", ("cannot decode %q: %s"):format(key, tostring(ok and (err or "no value") or v)),
    { key = key })
  return false
end

-- Records that key now has raw (nil: deleted) at version ver, with tag (what else the
-- server keeps with the value: Consul's flags and session), adding the change to batch.
local function set(self, batch, key, raw, ver, tag)
  local old = self.data[key]
  self.raw[key], self.tag[key] = raw, tag
  local new
  if raw ~= nil then
    local ok, v = decoded(self, key, raw)
    if not ok then
      self.version[key] = ver
      return
    end
    new = v
  elseif old == nil then
    return
  end
  self.data[key], self.version[key] = new, ver
  batch[#batch + 1] = { key = key, new = new, old = old }
end

local snapshot_later -- (self): a write of the snapshot file is due

-- Hands a batch to the hooks in order and wakes those waiting in mirror:wait.
local function deliver(self, batch)
  if #batch > 0 then
    self.changes = self.changes + #batch
    if self.source == "live" then snapshot_later(self) end
    if self.on_change then
      for _, c in ipairs(batch) do call_hook(self, self.on_change, c.key, c.new, c.old) end
    end
    if self.on_batch then call_hook(self, self.on_batch, batch) end
  end
  local ws = self.waiters
  self.waiters = {}
  for _, w in ipairs(ws) do sched.wake(w) end
end

-- Replaces the whole table by a listing {key, raw, ver, tag} (a snapshot): keys whose
-- version differs change (by_content: whose raw value or tag differs; an equal one only
-- takes the new version), keys not listed are deleted.
local function resync(self, list, by_content)
  local batch, seen = {}, {}
  for _, e in ipairs(list) do
    local k = e.key
    seen[k] = true
    if by_content then
      if self.raw[k] ~= e.raw or self.tag[k] ~= e.tag then
        set(self, batch, k, e.raw, e.ver, e.tag)
      elseif self.version[k] ~= nil then
        self.version[k] = e.ver
      end
    elseif self.version[k] ~= e.ver then
      set(self, batch, k, e.raw, e.ver, e.tag)
    end
  end
  local gone = {}
  for key in pairs(self.version) do
    if not seen[key] then gone[#gone + 1] = key end
  end
  table.sort(gone)
  for _, key in ipairs(gone) do
    set(self, batch, key, nil)
    self.version[key] = nil
  end
  return batch
end

-- Live data has been applied up to position.
local function synced(self, position)
  if not self.synced then
    self.synced, self.since, self.stale_since = true, coord.now(), nil
  end
  self.position = position
  if self.source ~= "live" then
    self.source, self.source_since, self.snapshot_time = "live", coord.now(), nil
    snapshot_later(self)
  end
end

---------------------------------------------------------------------------------------------
-- the snapshot file
--
-- Format 1, every integer little-endian, every string a 4-byte length and its bytes:
--   MAGIC, then u32 format (1), string backend, string prefix, i64 revision or index,
--   i64 written (os.time()), u32 count;
--   count records sorted by key: string key, string raw value, i64 version (mod revision or
--   ModifyIndex), string tag (Consul: "flags:session"; etcd: empty);
--   END.

local MAGIC, END, FORMAT = "coord-mirror-snapshot\n", "end\n", 1
local HEADER, RECORD = "<I4s4s4jjI4", "<s4s4js4"

local function snapshot_error(path, why, ...)
  return errors.new("snapshot", ("snapshot file %s %s"):format(path, why:format(...)), { path = path })
end

local function snapshot_encode(self)
  local keys = {}
  for k in pairs(self.raw) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = { MAGIC, HEADER:pack(FORMAT, self.backend, self.prefix, self.position or 0, os.time(), #keys) }
  for _, k in ipairs(keys) do
    parts[#parts + 1] = RECORD:pack(k, self.raw[k], self.version[k] or 0, self.tag[k] or "")
  end
  parts[#parts + 1] = END
  return table.concat(parts)
end

-- The file's contents as {list = {key, raw, ver, tag}, position, written}, or nil and a
-- "snapshot" error saying what is wrong with it.
local function snapshot_decode(self, s)
  local path = self.snapshot
  if s:sub(1, #MAGIC) ~= MAGIC then return nil, snapshot_error(path, "is not a coord mirror snapshot") end
  local ok, format, kind, prefix, position, written, count, i = pcall(HEADER.unpack, HEADER, s, #MAGIC + 1)
  if not ok then return nil, snapshot_error(path, "is truncated (in its header)") end
  if format ~= FORMAT then
    return nil, snapshot_error(path, "has format %d; this coord reads format %d", format, FORMAT)
  end
  if kind ~= self.backend then
    return nil, snapshot_error(path, "is of a %s mirror, not of a %s one", kind, self.backend)
  end
  if prefix ~= self.prefix then
    return nil, snapshot_error(path, "is of prefix %q, not of %q", prefix, self.prefix)
  end
  local list, seen = {}, {}
  for n = 1, count do
    local ok2, key, raw, ver, tag, nxt = pcall(RECORD.unpack, RECORD, s, i)
    if not ok2 then return nil, snapshot_error(path, "is truncated (at record %d of %d)", n, count) end
    if key:sub(1, #prefix) ~= prefix or seen[key] then
      return nil, snapshot_error(path, "is corrupt (record %d: key %q)", n, key)
    end
    seen[key] = true
    list[n] = { key = key, raw = raw, ver = ver, tag = tag ~= "" and tag or nil }
    i = nxt
  end
  if s:sub(i) ~= END then
    return nil, snapshot_error(path, #s - i + 1 < #END and "is truncated (no end mark)" or "is corrupt (after its last record)")
  end
  return { list = list, position = position, written = written }
end

-- A failure of the snapshot file (reading or writing) is the last error, and is kept in
-- snapshot_error until a write succeeds.
local function snapshot_failed(self, err)
  self.snapshot_error, self.last_error = err, err
  deliver(self, {})
end

local function snapshot_write(self)
  self.dirty, self.last_write = false, coord.now()
  local ok, msg = core.write_atomic(self.snapshot, snapshot_encode(self))
  if ok then
    self.snapshot_error = nil
  else
    snapshot_failed(self, errors.new("snapshot", "cannot write snapshot file: " .. msg, { path = self.snapshot }))
  end
end

function snapshot_later(self)
  if not self.snapshot or self.closed then return end
  self.dirty = true
  if self.writer then return end
  self.writer = coord.spawn(function()
    local d = (self.last_write or -math.huge) + self.snapshot_interval - coord.now()
    if d > 0 then coord.sleep(d) end
    self.writer = nil
    if self.dirty and not self.closed then snapshot_write(self) end
  end)
end

-- Loads the snapshot file once, unless live data came first; its keys are reported as
-- changes like those of a first listing.
local function snapshot_boot(self)
  if not self.snapshot or self.booted or self.source or self.closed then return end
  self.booted = true
  local f, msg = io.open(self.snapshot, "rb")
  if not f then
    return snapshot_failed(self, errors.new("snapshot", "cannot read snapshot file: " .. msg, { path = self.snapshot }))
  end
  local s = f:read("a")
  f:close()
  local snap, err = snapshot_decode(self, s or "")
  if not snap then return snapshot_failed(self, err) end
  local batch = resync(self, snap.list)
  self.position = snap.position
  self.source, self.source_since, self.snapshot_time = "snapshot", coord.now(), snap.written
  deliver(self, batch)
end

-- The source failed with err: the table may be stale from now on. The first failure since
-- the mirror was last synced sets stale_since and calls on_stale; waiters are woken so that
-- a wait on the status sees it.
local function failed(self, err)
  self.last_error = err
  if self.closed then return end
  snapshot_boot(self)
  if self.closed then return end -- a hook closed the mirror
  local was = self.synced or not self.stale_since
  self.synced = false
  if was then
    self.stale_since = coord.now()
    if self.on_stale then call_hook(self, self.on_stale, err) end
    deliver(self, {})
  end
end

-- Sleeps before another attempt after err: exponential with jitter, at most opts.max_backoff.
local function backoff(self, err)
  failed(self, err)
  coord.sleep(self.backoff:delay())
end

---------------------------------------------------------------------------------------------
-- etcd

local function etcd_snapshot(self)
  local kvs, err, header = self.client:range(self.prefix, { prefix = true, page_size = self.page_size })
  if not kvs then return nil, err end
  local list = {}
  for i, kv in ipairs(kvs) do list[i] = { key = kv.key, raw = kv.value, ver = kv.mod_revision } end
  local batch = resync(self, list, self.source == "snapshot")
  synced(self, header.revision)
  deliver(self, batch)
  return header.revision
end

local STREAM = { disconnected = true, reconnected = true }

-- Follows the watch from rev + 1 until it fails; returns the error. The watch's stream
-- events tell when it stops and starts following again.
local function etcd_follow(self, rev)
  local w <close> = self.client:watch(self.prefix, { prefix = true, start_revision = rev + 1,
    keepalive = self.keepalive, stream_events = true })
  local ahead -- an event read while collecting a batch, not part of it
  while true do
    local ev = ahead
    ahead = nil
    if not ev then
      local err
      ev, err = w:next()
      if not ev then return err end
    end
    if ev.type == "disconnected" then
      failed(self, ev.error)
    elseif ev.type == "reconnected" then
      synced(self, self.position)
      self.backoff:reset()
      deliver(self, {})
    else
      -- the events of one revision arrive together: take what is queued as one batch
      local batch, r = {}, ev.kv.mod_revision
      while true do
        set(self, batch, ev.kv.key, ev.type == "put" and ev.kv.value or nil, ev.kv.mod_revision)
        if ev.type ~= "put" then self.version[ev.kv.key] = nil end
        if #w == 0 then break end
        ev = w:next()
        if STREAM[ev.type] then
          ahead = ev
          break
        end
        if ev.kv.mod_revision ~= r then
          synced(self, r)
          deliver(self, batch)
          batch, r = {}, ev.kv.mod_revision
        end
      end
      synced(self, r)
      self.backoff:reset()
      deliver(self, batch)
    end
    if self.closed then return end -- a hook closed the mirror
  end
end

local function run_etcd(self)
  local rev
  while not self.closed do
    if not rev then
      local err
      rev, err = etcd_snapshot(self)
      if not rev then backoff(self, err) end
    else
      local err = etcd_follow(self, self.position)
      if errors.is(err) and err.kind == "compacted" then
        failed(self, err)
        rev = nil
      else
        backoff(self, err)
      end
    end
  end
end

---------------------------------------------------------------------------------------------
-- Consul

-- What a Consul entry holds besides its value, compared after an index reset.
local function consul_tag(e)
  return ("%d:%s"):format(e.flags or 0, e.session or "")
end

-- The watch ends on the first failed read (retry = false): the mirror reports it as stale,
-- backs off and starts a new watch, whose first listing is compared by content.
local function run_consul(self)
  local by_content = false
  while not self.closed do
    local w <close> = self.client.kv:watch(self.prefix, { recurse = true, wait = self.blocking_wait, retry = false })
    for entries, _, meta in w do
      local list = {}
      for i, e in ipairs(entries or {}) do
        list[i] = { key = e.key, raw = e.value, ver = e.modify_index, tag = consul_tag(e) }
      end
      local index = meta.index or 0
      local backwards = self.position ~= nil and math.ult(index, self.position)
      local batch = resync(self, list, by_content or backwards or self.source == "snapshot")
      by_content = false
      synced(self, index)
      self.backoff:reset()
      deliver(self, batch)
      if self.closed then return end -- a hook closed the mirror
    end
    if self.closed then return end
    by_content = true
    backoff(self, w.error or errors.new("closed", "watch ended"))
  end
end

---------------------------------------------------------------------------------------------
-- the mirror object

local function check_opts(opts)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error("bad argument #3 to 'mirror' (table or nil expected, got " .. type(opts) .. ")", 3)
  end
  for _, k in ipairs { "decode", "on_change", "on_batch", "on_stale" } do
    if opts[k] ~= nil and type(opts[k]) ~= "function" then
      error("bad option '" .. k .. "' to 'mirror' (function expected, got " .. type(opts[k]) .. ")", 3)
    end
  end
  local ka = opts.keepalive
  if ka ~= nil and (type(ka) ~= "number" or not (ka > 0)) then
    error("bad option 'keepalive' to 'mirror' (positive number expected, got " .. tostring(ka) .. ")", 3)
  end
  if opts.snapshot ~= nil and (type(opts.snapshot) ~= "string" or opts.snapshot == "") then
    error("bad option 'snapshot' to 'mirror' (file name expected, got " .. tostring(opts.snapshot) .. ")", 3)
  end
  for _, k in ipairs { "snapshot_interval", "snapshot_after" } do
    local v = opts[k]
    if v ~= nil and (type(v) ~= "number" or not (v >= 0) or v == math.huge) then
      error("bad option '" .. k .. "' to 'mirror' (non-negative number expected, got " .. tostring(v) .. ")", 3)
    end
  end
  return opts
end

--- Starts mirroring every key under prefix from client (a coord.etcd or coord.consul
--- client). opts: decode (function(raw) -> value, or nil, err; e.g. tonumber), on_change
--- (function(key, new, old), per key in order), on_batch (function(changes), once per
--- revision or listing; changes = list of {key, new, old}), on_stale (function(err), when the
--- mirror stops following), page_size (etcd snapshot pages, default 1000), wait (Consul
--- blocking wait, seconds, default 300), keepalive (etcd watch keepalive, seconds),
--- max_backoff (seconds, default 10), snapshot (a file name: keep a last-known-good copy
--- there and start from it when the backend cannot be reached), snapshot_interval (seconds
--- between writes at most, default 2), snapshot_after (seconds to wait for the backend before
--- loading the file, default 3; a failed first read loads it at once). Returns the mirror at
--- once; it fills in the background.
function M.new(client, prefix, opts)
  local kind = backend(client)
  if not kind then
    error("bad argument #1 to 'mirror' (coord.etcd or coord.consul client expected, got " .. type(client) .. ")", 2)
  end
  if type(prefix) ~= "string" then
    error("bad argument #2 to 'mirror' (string expected, got " .. type(prefix) .. ")", 2)
  end
  -- a prefix Consul cannot address raises here, not later in the mirror's task
  if kind == "consul" then require("coord.consul.kv")._check_key(prefix, "mirror", 2) end
  opts = check_opts(opts)
  local self = setmetatable({
    client = client, prefix = prefix, backend = kind, data = {}, version = {}, raw = {}, tag = {}, waiters = {},
    decode = opts.decode, on_change = opts.on_change, on_batch = opts.on_batch, on_stale = opts.on_stale,
    page_size = opts.page_size or 1000, blocking_wait = opts.wait, max_backoff = opts.max_backoff or 10,
    keepalive = opts.keepalive, snapshot = opts.snapshot, snapshot_interval = opts.snapshot_interval or 2,
    snapshot_after = opts.snapshot_after or 3,
    synced = false, since = nil, stale_since = nil, position = nil, last_error = nil, changes = 0,
  }, Mirror)
  self.backoff = sched.backoff(0.1, self.max_backoff)
  self.task = coord.spawn(kind == "etcd" and run_etcd or run_consul, self)
  if self.snapshot then
    self.loader = coord.spawn(function()
      coord.sleep(self.snapshot_after)
      self.loader = nil
      snapshot_boot(self)
    end)
  end
  return self
end

--- The current value of key (decoded), or nil.
function Mirror:get(key)
  return self.data[key]
end

--- Iterates over key, value pairs in no particular order: for k, v in m:pairs() do.
function Mirror:pairs()
  return next, self.data, nil
end
Mirror.__pairs = Mirror.pairs

--- The state: {synced (a snapshot is applied and the mirror is following), since (when it
--- last became synced, coord.now() seconds), stale_since (when it stopped following, while
--- it is not synced after a failure), revision or index (the last applied), changes
--- (applied so far), error (the last error, or nil; while the data is not live, a failure of
--- the snapshot file comes first), closed, source ("live", "snapshot" or nil: where the
--- table's data comes from), source_since (coord.now() when it came to), snapshot_time
--- (os.time() when the loaded file was written), snapshot_error (the last failure to read or
--- write the file, nil after a successful write)}.
function Mirror:status()
  local s = { synced = self.synced, since = self.since, stale_since = self.stale_since, changes = self.changes,
    error = self.source ~= "live" and self.snapshot_error or self.last_error, closed = self.closed == true,
    source = self.source, source_since = self.source_since, snapshot_time = self.snapshot_time,
    snapshot_error = self.snapshot_error }
  s[self.backend == "etcd" and "revision" or "index"] = self.position
  return s
end

local function cancel_wait(self)
  return function(w)
    for i, x in ipairs(self.waiters) do
      if x == w then table.remove(self.waiters, i) return end
    end
  end
end

local function holds(self, cond)
  if type(cond) == "string" then return self.data[cond] ~= nil end
  return cond(self)
end

--- Waits until cond holds: a key (until it has a value) or a function(mirror) -> true.
--- timeout in seconds (default: none). Returns true, or nil and a "timeout" or "closed" error.
function Mirror:wait(cond, timeout)
  if type(cond) ~= "string" and type(cond) ~= "function" then
    error("bad argument #1 to 'wait' (string or function expected, got " .. type(cond) .. ")", 2)
  end
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
    error("bad argument #2 to 'wait' (non-negative number expected, got " .. tostring(timeout) .. ")", 2)
  end
  local function until_true()
    while not holds(self, cond) do
      if self.closed then return nil, errors.new("closed", "mirror is closed") end
      local w = sched.waiter(cancel_wait(self))
      self.waiters[#self.waiters + 1] = w
      sched.wait(w)
    end
    return true
  end
  if timeout then return coord.timeout(timeout, until_true) end
  return until_true()
end

--- Stops following: the background task and its watch end; the table keeps its last
--- contents (and a snapshot file gets them, if a write was due). Waiters get a "closed"
--- error. Closing twice does nothing.
function Mirror:close()
  if self.closed then return end
  if self.dirty then snapshot_write(self) end
  if self.writer then self.writer:cancel() end
  if self.loader then self.loader:cancel() end
  self.closed, self.synced = true, false
  -- from one of its own hooks the task is running: it stops by itself after the hook
  if self.task:status() ~= "running" then self.task:cancel() end
  deliver(self, {})
end
Mirror.__close = Mirror.close

return M
