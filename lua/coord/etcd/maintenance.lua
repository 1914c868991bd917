-- coord.etcd.maintenance: alarms (NOSPACE recovery), defragmentation, KV hashes, snapshots
-- streamed to a file and checked against etcd's checksum, and leadership transfer.

local core = require "coord.core"
local http = require "coord.http"
local args = require "coord.args"
local errors = require "coord.errors"
local proto = require "coord.etcd.proto"

local header_of, int, uint = proto.header, proto.int, proto.uint
local u64tostring, b64decode = core.u64tostring, core.b64decode

local IDEMPOTENT = { idempotent = true }
-- seconds: a defragment rewrites the whole database file and blocks the member meanwhile
local DEFRAG_TIMEOUT = 60
-- seconds: the whole snapshot transfer
local SNAPSHOT_TIMEOUT = 300
local SNAPSHOT_PATH = "/v3/maintenance/snapshot"
-- etcd ends a snapshot with the SHA-256 of the bytes before it
local SUM_SIZE = 32

local alarm_names = { nospace = "NOSPACE", corrupt = "CORRUPT" }
local alarm_of = { NOSPACE = "nospace", CORRUPT = "corrupt" }

local function alarm_list(j)
  local list = {}
  for i, a in ipairs(type(j.alarms) == "table" and j.alarms or {}) do
    list[i] = { member_id = uint(a.memberID), alarm = alarm_of[a.alarm] or tostring(a.alarm):lower() }
  end
  return list
end

local function hex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

-- The directory holding path, whose entry a rename changes.
local function dir_of(path)
  local dir = path:match("^(.*)/[^/]*$")
  if dir == "" then return "/" end
  return dir or "."
end

-- The snapshot stream of target t over the JSON gateway: the stream (to close) and a reader
-- of its messages, each {blob (bytes), remaining_bytes, header}; nil at the end; nil, err.
local function json_snapshot(t, timeout)
  local s = http.stream {
    url = t.url .. SNAPSHOT_PATH, method = "POST", body = "{}", headers = t.headers, tls = t.tls,
    http_version = t.http_version, pipewait = t.pipewait, unix_socket = t.unix_socket,
    connect_to = t.connect_to, timeout = timeout,
  }
  local function read()
    local r, err = require("coord.etcd")._stream_result(s, SNAPSHOT_PATH, "snapshot stream")
    if not r then return nil, err end
    local blob = r.blob and b64decode(r.blob)
    if r.blob and not blob then return nil, errors.new("protocol", "snapshot stream: a blob that is not base64") end
    return { blob = blob, remaining_bytes = int(r.remaining_bytes), header = r.header }
  end
  return s, read
end

-- Copies one snapshot stream (opened by open(t, timeout), json_snapshot's or the gRPC
-- transport's) from target t into the open file f. Returns {size, sha256, endpoint}, header,
-- or nil and an error. The bytes go to the file as they arrive; all but the last 32 are
-- hashed, and the last 32 must be that hash.
local function copy_snapshot(open, t, f, timeout)
  local s, read = open(t, timeout)
  if not s then return nil, read end
  local _ <close> = s
  local h, tail, size, header, last = core.sha256(), "", 0, nil, nil
  while true do
    local r, err = read()
    if not r then
      if err then return nil, err end
      break
    end
    header = header or r.header
    local blob = r.blob
    if blob and blob ~= "" then
      local ok, werr = f:write(blob)
      if not ok then return nil, errors.new("io", "snapshot: " .. tostring(werr)) end
      size = size + #blob
      local both = tail .. blob
      if #both > SUM_SIZE then
        h:update(both:sub(1, #both - SUM_SIZE))
        tail = both:sub(-SUM_SIZE)
      else
        tail = both
      end
    end
    last = r.remaining_bytes
  end
  if last ~= 0 or size <= SUM_SIZE then
    return nil, errors.new("protocol", ("snapshot stream ended early (%d bytes)"):format(size))
  end
  local sum = h:digest()
  if sum ~= tail then
    return nil, errors.new("checksum", ("snapshot checksum mismatch: etcd sent %s, the data hashes to %s")
      :format(hex(tail), hex(sum)))
  end
  -- (3.4 and 3.5 send no header on this stream: its fields are then 0)
  return { size = size, sha256 = hex(sum), endpoint = t.endpoint }, header_of(header)
end

return function(Client, E)
  local check_endpoint = E._check_endpoint

  -- The URL of the member a per-member call goes to: endpoint, or the current endpoint.
  local function member_url(self, endpoint)
    if endpoint then return endpoint end
    local t, err = self:_target()
    if not t then return nil, err end
    return t.endpoint
  end

  --- The active alarms of the cluster: a list of {member_id, alarm ("nospace" or
  --- "corrupt")}, nil, header.
  function Client:alarms()
    local j, err = self:_post("/v3/maintenance/alarm", { action = "GET" }, IDEMPOTENT)
    if not j then return nil, err end
    return alarm_list(j), nil, header_of(j.header)
  end

  local function disarm(self, member_id, alarm)
    return self:_post("/v3/maintenance/alarm",
      { action = "DEACTIVATE", memberID = u64tostring(member_id), alarm = alarm_names[alarm] }, IDEMPOTENT)
  end

  --- Disarms one alarm (member_id and alarm name), or with no arguments every active one.
  --- Returns the list of alarms disarmed, nil, header.
  function Client:alarm_disarm(member_id, alarm)
    args.check(member_id, "integer", 1, "alarm_disarm", true)
    args.check(alarm, "string", 2, "alarm_disarm", member_id == nil)
    if alarm ~= nil and not alarm_names[alarm] then
      error(("bad argument #2 to 'alarm_disarm' (\"nospace\" or \"corrupt\" expected, got %q)"):format(alarm), 2)
    end
    if alarm ~= nil and member_id == nil then
      error("bad argument #1 to 'alarm_disarm' (integer expected with an alarm, got nil)", 2)
    end
    local todo, err, header
    if member_id then
      todo = { { member_id = member_id, alarm = alarm } }
    else
      todo, err, header = self:alarms()
      if not todo then return nil, err end
    end
    local done = {}
    for _, a in ipairs(todo) do
      local j, derr = disarm(self, a.member_id, a.alarm)
      if not j then return nil, derr end
      header = header_of(j.header)
      for _, d in ipairs(alarm_list(j)) do done[#done + 1] = d end
    end
    return done, nil, header
  end

  --- Defragments one member's database (endpoint: its URL; default the current endpoint),
  --- giving the space of deleted and compacted data back to the file system. The member
  --- blocks while it runs. opts: timeout (seconds, default 60). Returns true, nil, header.
  function Client:defragment(endpoint, opts)
    check_endpoint(endpoint, "defragment")
    opts = args.opts(opts, 2, "defragment")
    local timeout = args.option(opts, "timeout", "number", "defragment") or DEFRAG_TIMEOUT
    local url, err = member_url(self, endpoint)
    if not url then return nil, err end
    local j
    j, err = self:_at(url, "/v3/maintenance/defragment", {}, { timeout = timeout })
    if not j then return nil, err end
    return true, nil, header_of(j.header)
  end

  --- The hash of one member's key-value history up to revision (default the latest), to
  --- compare members: {hash, compact_revision (-1: never compacted), revision (the one
  --- hashed)}, nil, header. Members agree on the hash at the same revision. Needs etcd 3.5:
  --- 3.4's gateway has no route to it (its path is taken by the whole-database hash), and
  --- answers with an "unsupported" error.
  function Client:hash_kv(endpoint, revision)
    check_endpoint(endpoint, "hash_kv")
    args.check(revision, "integer", 2, "hash_kv", true)
    local url, err = member_url(self, endpoint)
    if not url then return nil, err end
    local j
    j, err = self:_at(url, "/v3/maintenance/hashkv", { revision = revision and tostring(revision) or nil }, IDEMPOTENT)
    if not j then
      if err.status == 404 and err.code == nil then
        err.kind, err.message = "unsupported", "this etcd's JSON gateway has no HashKV (etcd 3.5 or later has)"
      end
      return nil, err
    end
    local h = header_of(j.header)
    return { hash = math.tointeger(j.hash) or 0, compact_revision = int(j.compact_revision),
      revision = j.hash_revision and int(j.hash_revision) or revision or h.revision }, nil, h
  end

  --- Streams a snapshot of the current endpoint's database to the file at path: written to a
  --- temporary file next to it as it arrives, checked against the SHA-256 etcd sends last,
  --- then synced to disk and renamed over path, and the directory synced (on failure path is
  --- left as it was). The file is what
  --- `etcdctl snapshot save` writes, checksum included. opts: timeout (seconds for the whole
  --- transfer, default 300). Returns {size (bytes in the file), sha256 (hex), endpoint (the
  --- member it came from)}, nil, header (etcd 3.4 and 3.5 send none: its fields are 0).
  function Client:snapshot(path, opts)
    args.check(path, "string", 1, "snapshot")
    opts = args.opts(opts, 2, "snapshot")
    local timeout = args.option(opts, "timeout", "number", "snapshot") or SNAPSHOT_TIMEOUT
    local tmp = ("%s.%08x.part"):format(path, math.random(0, 0x7fffffff))
    for attempt = 1, 2 do
      local t, err = self:_target()
      if not t then return nil, err end
      local f, oerr = io.open(tmp, "wb")
      if not f then return nil, errors.new("io", "snapshot: " .. tostring(oerr)) end
      local res, h = copy_snapshot(self.grpc and self.grpc.snapshot or json_snapshot, t, f, timeout)
      local ok, cerr = f:close()
      if res and not ok then res, h = nil, errors.new("io", "snapshot: " .. tostring(cerr)) end
      if res then
        -- durable before it replaces path, and the rename durable before success is reported
        local moved, merr = core.fsync(tmp)
        if moved then moved, merr = os.rename(tmp, path) end
        if moved then moved, merr = core.fsync(dir_of(path)) end
        if moved then return res, nil, h end
        res, h = nil, errors.new("io", "snapshot: " .. tostring(merr))
      end
      os.remove(tmp)
      -- an expired token: authenticate again, once
      if attempt == 2 or not self:_refresh(h, t.token) then
        h.path = h.path or SNAPSHOT_PATH
        return nil, h
      end
    end
  end

  --- Hands the leadership to member id (a voting member): asked of the current leader,
  --- found through the current endpoint's status. Returns true, nil, header.
  function Client:move_leader(id)
    args.check(id, "integer", 1, "move_leader")
    local st, err = self:status()
    if not st then return nil, err end
    local members
    members, err = self:members()
    if not members then return nil, err end
    local url
    for _, m in ipairs(members) do
      if m.id == st.leader then url = m.client_urls[1] end
    end
    if not url then return nil, errors.new("unavailable", "the leader has no client URL (or there is no leader)") end
    local j
    j, err = self:_at(url, "/v3/maintenance/transfer-leadership", { targetID = u64tostring(id) })
    if not j then return nil, err end
    return true, nil, header_of(j.header)
  end
end
