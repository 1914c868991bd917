-- coord.consul.kv: the key/value store (/v1/kv): get, list, keys, put, delete, watch.

local core = require "coord.core"
local consul = require "coord.consul"

local M = {}

local KV = { __name = "coord.consul.kv" }
KV.__index = KV

function M.new(client)
  return setmetatable({ client = client }, KV)
end

local args = require "coord.args"
local url = require "coord.url"
local call_opts = consul._call_opts

-- Paths of recently used keys, so that a program reading the same keys over and over does not
-- check and escape them on every call. Only keys that passed check_key are stored. Bounded:
-- emptied when it reaches 1024 keys.
local paths, npaths = {}, 0

-- Consul's HTTP router redirects a path with an empty, "." or ".." segment to its cleaned
-- form (and libcurl would squash dot segments first): such keys cannot be addressed in a
-- URL, only in a transaction's body.
local function check_key(key, fname, i)
  if paths[key] then return end
  if type(key) ~= "string" then
    error(("bad argument #%d to '%s' (string expected, got %s)"):format(i or 1, fname, type(key)), 3)
  end
  if ("/" .. key):find("//", 1, true) or ("/" .. key .. "/"):find("/%.%.?/") then
    error(("bad argument #%d to '%s' (key with an empty, '.' or '..' segment: Consul's HTTP API cannot address it, use consul.txn)")
      :format(i or 1, fname), 3)
  end
end

-- Raises an argument error (argument i of fname) unless key can be addressed in a KV URL.
-- For coord.mirror; not a public API.
function M._check_key(key, fname, i)
  return check_key(key, fname, i)
end

-- The URL path of a key that passed check_key.
local function path(key)
  local p = paths[key]
  if p then return p end
  p = "/v1/kv/" .. url.path(key)
  if npaths >= 1024 then paths, npaths = {}, 0 end
  paths[key], npaths = p, npaths + 1
  return p
end

-- An entry table from the JSON Consul sends: Value is base64, Flags a uint64 (above 2^63-1
-- it is the negative Lua integer with the same bits). For coord.consul.txn.
-- (every read makes one: JSON nulls tested here, not through consul._value calls)
local null, b64decode = core.null, core.b64decode
function M._entry(e)
  local v, session = e.Value, e.Session
  if v == null or not v then
    v = ""
  else
    local err
    v, err = b64decode(v)
    if v == nil then error(err, 0) end
  end
  if session == null then session = nil end
  return {
    key = e.Key, value = v, flags = e.Flags,
    create_index = e.CreateIndex, modify_index = e.ModifyIndex, lock_index = e.LockIndex,
    session = session,
  }
end

-- What get reads of a GET /v1/kv/<key> reply: its first entry (see core.json_picker).
local ENTRY_PICKER = core.json_picker { "1:p", "1.Key:S", "1.Value:B", "1.Flags:n", "1.CreateIndex:n",
  "1.ModifyIndex:n", "1.LockIndex:n", "1.Session:S" }
local json_pick = core.json_pick

-- The entry M._entry would make of the first element of a reply's JSON text, read without
-- decoding the rest; nil when the text needs the full decode (core.json_pick's cases).
local function entry_reply(body)
  local ok, has, key, v, flags, create, modify, lock, session = json_pick(body, ENTRY_PICKER)
  if not (ok and has) then return nil end
  if v == null or not v then v = "" end
  if session == null then session = nil end
  return {
    key = key, value = v, flags = flags,
    create_index = create, modify_index = modify, lock_index = lock,
    session = session,
  }
end

M._pick_entry = entry_reply -- (for spec/pick_spec.lua)

local function flags_string(f)
  if f == nil then return nil end
  if math.type(f) ~= "integer" then error("bad argument #3 to 'put' (flags: integer expected)", 4) end
  return core.u64tostring(f)
end

-- Calls without options skip call_opts (a table of thirteen fields) and share these read-only
-- tables: _call never writes to its options.
local NO_QUERY, NOT_FOUND_OK = {}, { 404 }
-- plain: no option of its own (_call then skips the query when the client adds none either)
-- pick: the entry straight from the reply's text (_call then returns the meta, nil, the entry)
local PLAIN_GET = { query = NO_QUERY, ok = NOT_FOUND_OK, plain = true, pick = entry_reply }
-- (called directly: client:_call would go through Client.__index, a function)
local _call = consul.Client._call

--- The entry at key, nil and the meta; nil, nil, meta when absent; nil, err on failure.
--- opts.raw = true: the value alone.
function KV:get(key, opts)
  check_key(key, "get")
  local o, raw = PLAIN_GET, nil
  if opts ~= nil then
    opts = args.opts(opts, 2, "get")
    raw = opts.raw
    o = call_opts(opts, { raw = raw }, "get")
    o.ok, o.raw = NOT_FOUND_OK, raw
  end
  local res, err, entry = _call(self.client, "GET", path(key), o)
  if not res then return nil, err end
  if entry then return entry, nil, res end -- (picked: res is the meta)
  if res.status == 404 then return nil, nil, res.meta end
  if raw then return res.body or "", nil, res.meta end
  return M._entry(res.body[1]), nil, res.meta
end

--- The entries under prefix (an empty table when none), nil and the meta.
function KV:list(prefix, opts)
  check_key(prefix, "list")
  opts = args.opts(opts, 2, "list")
  local o = call_opts(opts, { recurse = true }, "list")
  o.ok = { 404 }
  local res, err = self.client:_call("GET", path(prefix), o)
  if not res then return nil, err end
  local out = {}
  if res.status ~= 404 then
    for i, e in ipairs(res.body) do out[i] = M._entry(e) end
  end
  return out, nil, res.meta
end

--- The key names under prefix (up to the first separator after it, if given), nil and the meta.
function KV:keys(prefix, opts)
  check_key(prefix, "keys")
  opts = args.opts(opts, 2, "keys")
  args.option(opts, "separator", "string", "keys")
  local o = call_opts(opts, { keys = true, separator = opts.separator }, "keys")
  o.ok = { 404 }
  local res, err = self.client:_call("GET", path(prefix), o)
  if not res then return nil, err end
  return res.status == 404 and {} or res.body, nil, res.meta
end

--- Writes value (any bytes) at key. opts: flags, cas (0 = only if absent), acquire/release
--- (a session ID). Returns true, nil, meta; false, nil, meta when a cas/acquire/release did
--- not apply; nil, err on failure.
function KV:put(key, value_, opts)
  check_key(key, "put")
  args.check(value_, "string", 2, "put")
  local o
  if opts == nil then
    o = { query = NO_QUERY, body = value_ }
  else
    opts = args.opts(opts, 3, "put")
    args.option(opts, "cas", "integer", "put")
    args.option(opts, "acquire", "string", "put")
    args.option(opts, "release", "string", "put")
    o = call_opts(opts, { flags = flags_string(opts.flags), cas = opts.cas,
      acquire = opts.acquire, release = opts.release }, "put")
    o.body = value_
  end
  local res, err = self.client:_call("PUT", path(key), o)
  if not res then return nil, err end
  return res.body == true, nil, res.meta
end

--- Deletes key, or every key under it with recurse = true; cas = index deletes only if the
--- key's modify index is still that. Returns true, nil, meta (false, nil, meta when the cas
--- failed); nil, err on failure.
function KV:delete(key, opts)
  check_key(key, "delete")
  opts = args.opts(opts, 2, "delete")
  args.option(opts, "cas", "integer", "delete")
  local res, err = self.client:_call("DELETE", path(key),
    call_opts(opts, { recurse = opts.recurse, cas = opts.cas }, "delete"))
  if not res then return nil, err end
  return res.body == true, nil, res.meta
end

--- An iterator over the changes of key (entry, or false when absent, then nil and the meta)
--- or, with recurse = true, of the prefix (entries). See coord.consul.watch.
function KV:watch(key, opts)
  check_key(key, "watch")
  opts = args.opts(opts, 2, "watch")
  return require("coord.consul.watch").kv(self, key, opts)
end

args.methods(KV)

return M
