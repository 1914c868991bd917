-- coord.consul.kv: the key/value store (/v1/kv): get, list, keys, put, delete, watch.

local core = require "coord.core"
local consul = require "coord.consul"

local M = {}

local KV = { __name = "coord.consul.kv" }
KV.__index = KV

function M.new(client)
  return setmetatable({ client = client }, KV)
end

local call_opts, check_opts, value = consul.call_opts, consul.check_opts, consul.value

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

--- Raises an argument error (argument i of fname) unless key can be addressed in a KV URL.
function M.check_key(key, fname, i)
  return check_key(key, fname, i)
end

-- The URL path of a key that passed check_key.
local function path(key)
  local p = paths[key]
  if p then return p end
  p = "/v1/kv/" .. consul.escape_path(key)
  if npaths >= 1024 then paths, npaths = {}, 0 end
  paths[key], npaths = p, npaths + 1
  return p
end

--- An entry table from the JSON Consul sends: Value is base64, Flags a uint64 (above 2^63-1
--- it is the negative Lua integer with the same bits).
function M.entry(e)
  local v = value(e.Value)
  return {
    key = e.Key, value = v and assert(core.b64decode(v)) or "", flags = e.Flags,
    create_index = e.CreateIndex, modify_index = e.ModifyIndex, lock_index = e.LockIndex,
    session = value(e.Session),
  }
end

local function flags_string(f)
  if f == nil then return nil end
  if math.type(f) ~= "integer" then error("bad argument #3 to 'put' (flags: integer expected)", 4) end
  return core.u64tostring(f)
end

-- Calls without options skip call_opts (a table of thirteen fields) and share these read-only
-- tables: _call never writes to its options.
local NO_QUERY, NOT_FOUND_OK = {}, { 404 }
local PLAIN_GET = { query = NO_QUERY, ok = NOT_FOUND_OK }

--- The entry at key, or nil when absent; and the meta. opts.raw = true: the value alone.
function KV:get(key, opts)
  check_key(key, "get")
  local o, raw = PLAIN_GET, nil
  if opts ~= nil then
    opts = check_opts(opts, "get", 2)
    raw = opts.raw
    o = call_opts(opts, { raw = raw })
    o.ok, o.raw = NOT_FOUND_OK, raw
  end
  local res, err = self.client:_call("GET", path(key), o)
  if not res then return nil, err end
  if res.status == 404 then return nil, res.meta end
  if raw then return res.body or "", res.meta end
  return M.entry(res.body[1]), res.meta
end

--- The entries under prefix (an empty table when none), and the meta.
function KV:list(prefix, opts)
  check_key(prefix, "list")
  opts = check_opts(opts, "list", 2)
  local o = call_opts(opts, { recurse = true })
  o.ok = { 404 }
  local res, err = self.client:_call("GET", path(prefix), o)
  if not res then return nil, err end
  local out = {}
  if res.status ~= 404 then
    for i, e in ipairs(res.body) do out[i] = M.entry(e) end
  end
  return out, res.meta
end

--- The key names under prefix (up to the first separator after it, if given), and the meta.
function KV:keys(prefix, opts)
  check_key(prefix, "keys")
  opts = check_opts(opts, "keys", 2)
  local o = call_opts(opts, { keys = true, separator = opts.separator })
  o.ok = { 404 }
  local res, err = self.client:_call("GET", path(prefix), o)
  if not res then return nil, err end
  return res.status == 404 and {} or res.body, res.meta
end

--- Writes value (any bytes) at key. opts: flags, cas (0 = only if absent), acquire/release
--- (a session ID). Returns true, or false when a cas/acquire/release did not apply; and the meta.
function KV:put(key, value_, opts)
  check_key(key, "put")
  if type(value_) ~= "string" then
    error("bad argument #2 to 'put' (string expected, got " .. type(value_) .. ")", 2)
  end
  local o
  if opts == nil then
    o = { query = NO_QUERY, body = value_ }
  else
    opts = check_opts(opts, "put", 3)
    o = call_opts(opts, { flags = flags_string(opts.flags), cas = opts.cas,
      acquire = opts.acquire, release = opts.release })
    o.body = value_
  end
  local res, err = self.client:_call("PUT", path(key), o)
  if not res then return nil, err end
  return res.body == true, res.meta
end

--- Deletes key, or every key under it with recurse = true; cas = index deletes only if the
--- key's modify index is still that. Returns true (false when the cas failed), and the meta.
function KV:delete(key, opts)
  check_key(key, "delete")
  opts = check_opts(opts, "delete", 2)
  local res, err = self.client:_call("DELETE", path(key),
    call_opts(opts, { recurse = opts.recurse, cas = opts.cas }))
  if not res then return nil, err end
  return res.body == true, res.meta
end

--- An iterator over the changes of key (entry, or false when absent) or, with recurse =
--- true, of the prefix (entries). See coord.consul.watch.
function KV:watch(key, opts)
  check_key(key, "watch")
  opts = check_opts(opts, "watch", 2)
  return require("coord.consul.watch").kv(self, key, opts)
end

require("coord.args").methods(KV)

return M
