-- coord.etcd.auth: auth administration: turning auth on and off, users, roles and the key
-- ranges a role may read or write.

local args = require "coord.args"
local proto = require "coord.etcd.proto"

local header_of, b64, bytes = proto.header, proto.b64, proto.bytes

local IDEMPOTENT = { idempotent = true }

local perm_names = { read = "READ", write = "WRITE", readwrite = "READWRITE" }
local perm_of = { READ = "read", WRITE = "write", READWRITE = "readwrite" }

-- The server's refusals that name a thing, as portable kinds: a missing user, role or
-- permission is "not_found", a user or role that exists already "conflict".
local function kind_of(err)
  local m = err.message
  if m:find("not found", 1, true) or m:find("is not granted", 1, true) then
    err.kind = "not_found"
  elseif m:find("already exists", 1, true) then
    err.kind = "conflict"
  end
  return err
end

-- The raw key and range end a permission covers: key alone, opts.prefix (every key that
-- starts with key; "" is every key) or opts.range_end (up to it, "\0" to the end).
local function perm_range(key, opts, fname)
  local range_end = args.option(opts, "range_end", "string", fname)
  if opts.prefix then
    if range_end then error(("bad option 'range_end' to '%s' (not with prefix)"):format(fname), 3) end
    if key == "" then return "\0", "\0" end
    return key, proto.prefix_end(key)
  end
  if key == "" then key = "\0" end
  return key, range_end
end

local function strings(list)
  local out = {}
  for i, s in ipairs(type(list) == "table" and list or {}) do out[i] = s end
  return out
end

return function(Client)
  local function call(self, path, body, idempotent)
    local j, err = self:_post(path, body, idempotent and IDEMPOTENT or nil)
    if not j then return nil, kind_of(err) end
    return j
  end

  -- A call that only succeeds or fails: true, nil, header.
  local function done(j, err)
    if not j then return nil, err end
    return true, nil, header_of(j.header)
  end

  --- Turns authentication on (a user "root" with the role "root" must exist). From then on
  --- every call needs a user and password. Returns true, nil, header.
  function Client:auth_enable()
    return done(call(self, "/v3/auth/enable", {}, true))
  end

  --- Turns authentication off (as root). Returns true, nil, header.
  function Client:auth_disable()
    return done(call(self, "/v3/auth/disable", {}, true))
  end

  --- Adds a user with a password. Returns true, nil, header; an existing user is a
  --- "conflict" error.
  function Client:user_add(name, password)
    args.check(name, "string", 1, "user_add")
    args.check(password, "string", 2, "user_add")
    return done(call(self, "/v3/auth/user/add", { name = name, password = password }))
  end

  --- A user: {name, roles (list of role names)}, nil, header; nil, nil when there is no
  --- such user.
  function Client:user_get(name)
    args.check(name, "string", 1, "user_get")
    local j, err = call(self, "/v3/auth/user/get", { name = name }, true)
    if not j then
      if err.kind == "not_found" then return nil, nil end
      return nil, err
    end
    return { name = name, roles = strings(j.roles) }, nil, header_of(j.header)
  end

  --- The names of every user, sorted, nil, header.
  function Client:user_list()
    local j, err = call(self, "/v3/auth/user/list", {}, true)
    if not j then return nil, err end
    return strings(j.users), nil, header_of(j.header)
  end

  --- Deletes a user. Returns true, nil, header; an unknown user is a "not_found" error.
  function Client:user_delete(name)
    args.check(name, "string", 1, "user_delete")
    return done(call(self, "/v3/auth/user/delete", { name = name }))
  end

  --- Sets a user's password. Returns true, nil, header.
  function Client:user_change_password(name, password)
    args.check(name, "string", 1, "user_change_password")
    args.check(password, "string", 2, "user_change_password")
    return done(call(self, "/v3/auth/user/changepw", { name = name, password = password }))
  end

  --- Grants role to user. Returns true, nil, header.
  function Client:user_grant_role(user, role)
    args.check(user, "string", 1, "user_grant_role")
    args.check(role, "string", 2, "user_grant_role")
    return done(call(self, "/v3/auth/user/grant", { user = user, role = role }))
  end

  --- Takes role away from user. Returns true, nil, header; a role the user does not have is
  --- a "not_found" error.
  function Client:user_revoke_role(user, role)
    args.check(user, "string", 1, "user_revoke_role")
    args.check(role, "string", 2, "user_revoke_role")
    return done(call(self, "/v3/auth/user/revoke", { name = user, role = role }))
  end

  --- Adds a role (with no permissions). Returns true, nil, header; an existing role is a
  --- "conflict" error.
  function Client:role_add(name)
    args.check(name, "string", 1, "role_add")
    return done(call(self, "/v3/auth/role/add", { name = name }))
  end

  --- A role: {name, perms = list of {perm ("read", "write" or "readwrite"), key,
  --- range_end (nil for one key)}}, nil, header; nil, nil when there is no such role.
  function Client:role_get(name)
    args.check(name, "string", 1, "role_get")
    local j, err = call(self, "/v3/auth/role/get", { role = name }, true)
    if not j then
      if err.kind == "not_found" then return nil, nil end
      return nil, err
    end
    local perms = {}
    for i, p in ipairs(type(j.perm) == "table" and j.perm or {}) do
      local re = p.range_end and bytes(p.range_end) or ""
      -- an absent permType is proto3's zero value, READ
      perms[i] = { perm = perm_of[p.permType or "READ"] or tostring(p.permType):lower(), key = bytes(p.key),
        range_end = re ~= "" and re or nil }
    end
    return { name = name, perms = perms }, nil, header_of(j.header)
  end

  --- The names of every role, sorted, nil, header.
  function Client:role_list()
    local j, err = call(self, "/v3/auth/role/list", {}, true)
    if not j then return nil, err end
    return strings(j.roles), nil, header_of(j.header)
  end

  --- Deletes a role. Returns true, nil, header; an unknown role is a "not_found" error.
  function Client:role_delete(name)
    args.check(name, "string", 1, "role_delete")
    return done(call(self, "/v3/auth/role/delete", { role = name }))
  end

  --- Lets role use key: opts perm ("read", "write" or "readwrite", default "readwrite"),
  --- prefix (every key starting with key) or range_end. Keys are the server's keys: the
  --- client's prefix is not added. Returns true, nil, header.
  function Client:role_grant(role, key, opts)
    args.check(role, "string", 1, "role_grant")
    args.check(key, "string", 2, "role_grant")
    opts = args.opts(opts, 3, "role_grant")
    local perm = args.option(opts, "perm", "string", "role_grant") or "readwrite"
    if not perm_names[perm] then
      error(("bad option 'perm' to 'role_grant' (\"read\", \"write\" or \"readwrite\" expected, got %q)"):format(perm), 2)
    end
    local k, re = perm_range(key, opts, "role_grant")
    return done(call(self, "/v3/auth/role/grant", { name = role,
      perm = { permType = perm_names[perm], key = b64(k), range_end = re and b64(re) } }))
  end

  --- Takes away the permission role has on key (opts prefix or range_end, as role_grant
  --- gave it). Returns true, nil, header; a permission the role does not have is a
  --- "not_found" error.
  function Client:role_revoke(role, key, opts)
    args.check(role, "string", 1, "role_revoke")
    args.check(key, "string", 2, "role_revoke")
    opts = args.opts(opts, 3, "role_revoke")
    local k, re = perm_range(key, opts, "role_revoke")
    return done(call(self, "/v3/auth/role/revoke", { role = role, key = b64(k), range_end = re and b64(re) }))
  end
end
