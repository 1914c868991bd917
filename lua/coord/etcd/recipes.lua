-- coord.etcd.recipes: in-order keys (append) and software transactions (atomically), both
-- built on one txn that commits only if what it was computed from has not changed.

local args = require "coord.args"
local errors = require "coord.errors"
local sched = require "coord.sched"
local proto = require "coord.etcd.proto"

local b64, header_of = proto.b64, proto.header

-- append's marker key for a prefix: outside the prefix, so a listing never shows it
local MARK = "coord-append:"
local IDEMPOTENT = { idempotent = true }
local APPEND_RETRIES, ATOMIC_RETRIES = 20, 10

-- The pauses between attempts after conflicts: from 10 ms, doubling up to 0.5 s, jittered so
-- that contenders that lost together do not come back together.
local function conflict_backoff()
  return sched.backoff(0.01, 0.5)
end

local function retries_option(opts, fname, default)
  local n = args.option(opts, "retries", "integer", fname)
  if n and n < 0 then error(("bad option 'retries' to '%s' (non-negative integer expected)"):format(fname), 3) end
  return n or default
end

return function(Client, E)
  local function raw(self, key)
    return (E._key_range(self, key, {}))
  end

  local function compare(self, key, target, result, field, v)
    return { key = b64(raw(self, key)), target = target, result = result, [field] = tostring(v) }
  end

  ---------------------------------------------------------------------------------------------
  -- append

  --- Makes a new key under prefix whose name sorts in creation order: prefix followed by 20
  --- digits. Returns the kv made, nil, the header. opts: lease, retries (default 20).
  ---
  --- The digits are R + 1, R being a revision read after the marker key
  --- "coord-append:"..prefix was last written; one txn writes the key and the marker only if
  --- the marker has not been written since (mod_revision <= R) and the key does not exist,
  --- else it is tried again with the revision of its answer. So every append made before it
  --- committed at a revision <= R, with a name <= R: names grow with commit order, and listing
  --- the prefix in key order lists them in create_revision order. A name is at most its key's
  --- create_revision.
  function Client:append(prefix, value, opts)
    args.check(prefix, "string", 1, "append")
    args.check(value, "string", 2, "append")
    opts = args.opts(opts, 3, "append")
    -- (so the marker is never under the prefix, nor the prefix among the markers)
    if MARK:sub(1, #prefix) == prefix or prefix:sub(1, #MARK) == MARK then
      error("bad argument #1 to 'append' (non-empty prefix expected, not a start of \"" .. MARK .. "\" nor under it)", 2)
    end
    local mark = MARK .. prefix
    local lease = args.option(opts, "lease", "integer", "append")
    local retries = retries_option(opts, "append", APPEND_RETRIES)
    -- a revision read after the marker's last write
    local function mark_read()
      local j, err = self:_post("/v3/kv/range", { key = b64(raw(self, mark)), keys_only = true }, IDEMPOTENT)
      if not j then return nil, err end
      return header_of(j.header).revision
    end
    local rev, err = mark_read()
    if not rev then return nil, err end
    local j
    local backoff = conflict_backoff()
    for attempt = 1, retries + 1 do
      local key = prefix .. ("%020d"):format(rev + 1)
      j, err = self:_post("/v3/kv/txn", {
        compare = {
          compare(self, mark, "MOD", "LESS", "mod_revision", rev + 1),
          compare(self, key, "CREATE", "EQUAL", "create_revision", 0),
        },
        success = {
          { request_put = E._put_request(self, mark, key, {}) },
          { request_put = E._put_request(self, key, value, { lease = lease }) },
        },
      })
      if not j then return nil, err end
      local h = header_of(j.header)
      if j.succeeded then
        return { key = key, value = value, create_revision = h.revision, mod_revision = h.revision, version = 1,
          lease = lease or 0 }, nil, h
      end
      -- Again at once with the answer's revision, which is fresh; every second conflict
      -- pauses first (jittered, so contenders that lost together part) and then reads the
      -- revision again: after a pause the answer's is stale, and any append made meanwhile
      -- would fail the attempt for certain (a contender that backed off lost every round).
      rev = h.revision
      if attempt <= retries and attempt % 2 == 0 then
        sched.sleep(backoff:delay())
        rev, err = mark_read()
        if not rev then return nil, err end
      end
    end
    return nil, errors.new("conflict", ("append to %q: %d attempts conflicted"):format(prefix, retries + 1),
      { attempts = retries + 1 })
  end

  ---------------------------------------------------------------------------------------------
  -- atomically

  local Tx = { __name = "coord.etcd.tx" }
  Tx.__index = Tx
  Tx.__close = function(tx) tx.done = true end

  local function live(tx, fname)
    if tx.done then error(("calling '%s' on a transaction that has ended"):format(fname), 3) end
  end

  --- The value of key in this transaction: what it wrote, else what etcd had at the
  --- transaction's snapshot (read once, at the revision of its first read). nil when absent.
  --- A failed read returns nil, err and the transaction will not commit.
  function Tx:get(key)
    args.check(key, "string", 1, "get")
    live(self, "get")
    local w = self.writes[key]
    if w then return w.value end
    local r = self.reads[key]
    if r then return r.kv and r.kv.value or nil end
    local c = self.client
    local j, err = c:_post("/v3/kv/range", E._range_request(c, key, { revision = self.revision }), IDEMPOTENT)
    if not j then
      self.err = self.err or err
      return nil, err
    end
    if not self.revision then self.revision = header_of(j.header).revision end
    local kv = j.kvs and j.kvs[1] and proto.kv(j.kvs[1], #c.prefix) or false
    self.reads[key] = { kv = kv }
    self.read_order[#self.read_order + 1] = key
    return kv and kv.value or nil
  end

  --- The keys under prefix in this transaction, in key order, as a list of {key, value}:
  --- etcd's at the snapshot (read once), with what the transaction wrote. At commit every
  --- key listed is compared, and the range is compared for keys created since the snapshot.
  function Tx:range(prefix)
    args.check(prefix, "string", 1, "range")
    live(self, "range")
    local c = self.client
    if not self.ranges[prefix] then
      local body = E._range_request(c, prefix, { prefix = true, revision = self.revision })
      local j, err = c:_post("/v3/kv/range", body, IDEMPOTENT)
      if not j then
        self.err = self.err or err
        return nil, err
      end
      if not self.revision then self.revision = header_of(j.header).revision end
      for _, jkv in ipairs(j.kvs or {}) do
        local kv = proto.kv(jkv, #c.prefix)
        if not self.reads[kv.key] then
          self.reads[kv.key] = { kv = kv }
          self.read_order[#self.read_order + 1] = kv.key
        end
      end
      self.ranges[prefix] = true
      self.range_order[#self.range_order + 1] = prefix
    end
    local seen, out = {}, {}
    local function add(key)
      if seen[key] or key:sub(1, #prefix) ~= prefix then return end
      seen[key] = true
      local v = self:get(key)
      if v then out[#out + 1] = { key = key, value = v } end
    end
    for _, key in ipairs(self.read_order) do add(key) end
    for _, key in ipairs(self.write_order) do add(key) end
    table.sort(out, function(a, b) return a.key < b.key end)
    return out
  end

  local function write(tx, key, w)
    if not tx.writes[key] then tx.write_order[#tx.write_order + 1] = key end
    tx.writes[key] = w
  end

  --- Sets key to value when the transaction commits. opts: lease.
  function Tx:put(key, value, opts)
    args.check(key, "string", 1, "put")
    args.check(value, "string", 2, "put")
    opts = args.opts(opts, 3, "put")
    live(self, "put")
    write(self, key, { value = value, lease = args.option(opts, "lease", "integer", "put") })
  end

  --- Deletes key when the transaction commits.
  function Tx:delete(key)
    args.check(key, "string", 1, "delete")
    live(self, "delete")
    write(self, key, { delete = true })
  end

  args.methods(Tx)

  -- The txn that applies tx's writes if no key it read has changed since its snapshot.
  local function commit_request(self, tx)
    local cmp, ops = {}, {}
    for i, key in ipairs(tx.read_order) do
      local kv = tx.reads[key].kv
      cmp[i] = kv and compare(self, key, "MOD", "EQUAL", "mod_revision", kv.mod_revision)
        or compare(self, key, "VERSION", "EQUAL", "version", 0)
    end
    for _, prefix in ipairs(tx.range_order) do
      local k, re = E._key_range(self, prefix, { prefix = true })
      cmp[#cmp + 1] = { key = b64(k), range_end = b64(re), target = "MOD", result = "LESS",
        mod_revision = tostring(tx.revision + 1) }
    end
    for i, key in ipairs(tx.write_order) do
      local w = tx.writes[key]
      ops[i] = w.delete and { request_delete_range = E._delete_request(self, key, {}) }
        or { request_put = E._put_request(self, key, w.value, { lease = w.lease }) }
    end
    return { compare = cmp[1] and cmp or nil, success = ops[1] and ops or nil }
  end

  --- Runs fn(tx) and commits what it wrote in one txn, if no key it read has changed since;
  --- else runs it again with a fresh view, up to opts.retries times (default 10). Returns
  --- fn's first result (true when that is nil), nil, the header of the commit. Errors raised
  --- in fn propagate; a failed read or commit returns nil, err (a commit whose outcome is
  --- unknown is not run again); retries used up: nil, err of kind "conflict".
  function Client:atomically(fn, opts)
    args.check(fn, "function", 1, "atomically")
    opts = args.opts(opts, 2, "atomically")
    local retries = retries_option(opts, "atomically", ATOMIC_RETRIES)
    local backoff = conflict_backoff()
    for attempt = 1, retries + 1 do
      local tx <close> = setmetatable({ client = self, reads = {}, read_order = {}, writes = {}, write_order = {},
        ranges = {}, range_order = {} }, Tx)
      local result = fn(tx)
      tx.done = true
      if tx.err then return nil, tx.err end
      local j, err = self:_post("/v3/kv/txn", commit_request(self, tx))
      if not j then return nil, err end
      if j.succeeded then
        if result == nil then result = true end
        return result, nil, header_of(j.header)
      end
      if attempt <= retries then sched.sleep(backoff:delay()) end
    end
    return nil, errors.new("conflict", ("atomically: %d attempts conflicted"):format(retries + 1),
      { attempts = retries + 1 })
  end
end
