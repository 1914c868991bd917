-- coord.etcd.txn: transactions (compare, then a success or failure branch of operations)
-- and the conditional writes built on them: create, replace, update, delete_if.

local proto = require "coord.etcd.proto"
local args = require "coord.args"

local b64, header_of = proto.b64, proto.header

return function(Client, E)
  local check = args.check

  local results = {
    equal = "EQUAL", ["=="] = "EQUAL", greater = "GREATER", [">"] = "GREATER",
    less = "LESS", ["<"] = "LESS", not_equal = "NOT_EQUAL", ["~="] = "NOT_EQUAL", ["!="] = "NOT_EQUAL",
  }
  -- the kv field a compare tests, and the gateway's target name for it
  local targets = { version = "VERSION", create_revision = "CREATE", mod_revision = "MOD", value = "VALUE",
    lease = "LEASE" }

  local function bad(what, msg)
    error("bad " .. what .. " to 'txn' (" .. msg .. ")", 4)
  end

  local function compare(self, c, what)
    if type(c) ~= "table" then bad(what, "table expected, got " .. type(c)) end
    if type(c.key) ~= "string" then bad(what, "key: string expected, got " .. type(c.key)) end
    local field
    for f in pairs(targets) do
      if c[f] ~= nil then
        if field then bad(what, "more than one of version, create_revision, mod_revision, value, lease") end
        field = f
      end
    end
    if not field then bad(what, "one of version, create_revision, mod_revision, value, lease expected") end
    local result = results[c.result or "=="]
    if not result then bad(what, "unknown result " .. tostring(c.result)) end
    local k, re = E._key_range(self, c.key, c, "txn")
    local out = { key = b64(k), range_end = re and b64(re), target = targets[field], result = result }
    local v = c[field]
    if field == "value" then
      if type(v) ~= "string" then bad(what, "value: string expected, got " .. type(v)) end
      out.value = b64(v)
    else
      if math.type(v) ~= "integer" then bad(what, field .. ": integer expected, got " .. (math.type(v) or type(v))) end
      out[field] = tostring(v)
    end
    return out
  end

  local txn_request

  -- An operation: {put = key, value = ..., lease, prev_kv, ...}, {get = key, ...range
  -- options}, {delete = key, prefix, range_end, prev_kv} or {txn = {compare, success, failure}}.
  local function request_op(self, op, what)
    if type(op) ~= "table" then bad(what, "table expected, got " .. type(op)) end
    if op.put ~= nil then
      if type(op.put) ~= "string" then bad(what, "put: key string expected") end
      if type(op.value) ~= "string" and not op.ignore_value then bad(what, "value: string expected") end
      return { request_put = E._put_request(self, op.put, op.value, op, "txn") }
    elseif op.get ~= nil then
      if type(op.get) ~= "string" then bad(what, "get: key string expected") end
      return { request_range = E._range_request(self, op.get, op, "txn") }
    elseif op.delete ~= nil then
      if type(op.delete) ~= "string" then bad(what, "delete: key string expected") end
      return { request_delete_range = E._delete_request(self, op.delete, op, "txn") }
    elseif op.txn ~= nil then
      return { request_txn = txn_request(self, op.txn) }
    end
    bad(what, "one of put, get, delete, txn expected")
  end

  local function list(self, t, fn, name)
    if t == nil then return nil end
    if type(t) ~= "table" then bad(name, "table expected, got " .. type(t)) end
    if #t == 0 then return nil end
    local out = {}
    for i, x in ipairs(t) do out[i] = fn(self, x, name .. " #" .. i) end
    return out
  end

  function txn_request(self, spec)
    if type(spec) ~= "table" then bad("argument #1", "table expected, got " .. type(spec)) end
    return {
      compare = list(self, spec.compare, compare, "compare"),
      success = list(self, spec.success, request_op, "success"),
      failure = list(self, spec.failure, request_op, "failure"),
    }
  end

  local txn_result

  local function response_op(self, r)
    if r.response_put then
      return { type = "put", prev_kv = E._prev_of(self, r.response_put) }
    elseif r.response_range then
      local kvs = E._range_result(self, r.response_range)
      kvs.type = "get"
      return kvs
    elseif r.response_delete_range then
      local n, prev = E._delete_result(self, r.response_delete_range)
      return { type = "delete", deleted = n, prev_kvs = prev }
    elseif r.response_txn then
      local res = txn_result(self, r.response_txn)
      res.type = "txn"
      return res
    end
    return {}
  end

  function txn_result(self, j)
    local out = {}
    for i, r in ipairs(j.responses or {}) do out[i] = response_op(self, r) end
    return { succeeded = j.succeeded == true, responses = out }
  end

  --- Runs a transaction: spec = {compare = {...}, success = {...}, failure = {...}}.
  --- Returns `result, nil, header` with result = {succeeded, responses}; a txn whose compare
  --- failed is a result with succeeded = false (ran its failure branch), not an error. Not
  --- retried on another endpoint.
  function Client:txn(spec)
    local body = txn_request(self, spec)
    local j, err = self:_post("/v3/kv/txn", body)
    if not j then return nil, err end
    return txn_result(self, j), nil, header_of(j.header)
  end

  -- Puts or deletes `op` if `cmp` holds, else reads the key: `true, nil, header`; or
  -- `false, nil, header, current` (the current kv, nil when absent).
  local function guarded(self, cmp, op)
    local key = op.put or op.delete
    local j, err = self:_post("/v3/kv/txn", {
      compare = { compare(self, cmp, "compare") },
      success = { request_op(self, op, "success") },
      failure = { { request_range = E._range_request(self, key, {}) } },
    })
    if not j then return nil, err end
    local h = header_of(j.header)
    if j.succeeded then return true, nil, h end
    local r = j.responses and j.responses[1] and j.responses[1].response_range
    local kv = r and r.kvs and r.kvs[1]
    return false, nil, h, kv and proto.kv(kv, #self.prefix) or nil
  end

  local function put_op(key, value, opts)
    return { put = key, value = value, lease = opts and opts.lease }
  end

  --- Puts key only if it does not exist: `true, nil, header`; `false, nil, header, current`
  --- when it exists (the lost race). opts: lease.
  function Client:create(key, value, opts)
    check(key, "string", 1, "create")
    check(value, "string", 2, "create")
    check(opts, "table", 3, "create", true)
    return guarded(self, { key = key, version = 0 }, put_op(key, value, opts))
  end

  --- Puts key only if its current value is `old` (test-and-set): `true, nil, header`, or
  --- `false, nil, header, current` (current: the kv, nil when absent). opts: lease.
  function Client:replace(key, old, value, opts)
    check(key, "string", 1, "replace")
    check(old, "string", 2, "replace")
    check(value, "string", 3, "replace")
    check(opts, "table", 4, "replace", true)
    return guarded(self, { key = key, value = old }, put_op(key, value, opts))
  end

  --- Puts key only if its mod_revision is still `revision` (nobody wrote it since it was
  --- read): `true, nil, header`, or `false, nil, header, current`. opts: lease.
  function Client:update(key, value, revision, opts)
    check(key, "string", 1, "update")
    check(value, "string", 2, "update")
    check(revision, "integer", 3, "update")
    check(opts, "table", 4, "update", true)
    return guarded(self, { key = key, mod_revision = revision }, put_op(key, value, opts))
  end

  --- Deletes key only if its mod_revision is still `revision`: `true, nil, header`, or
  --- `false, nil, header, current`.
  function Client:delete_if(key, revision)
    check(key, "string", 1, "delete_if")
    check(revision, "integer", 2, "delete_if")
    return guarded(self, { key = key, mod_revision = revision }, { delete = key })
  end
end
