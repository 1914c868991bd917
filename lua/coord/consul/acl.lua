-- coord.consul.acl: ACL administration (/v1/acl): tokens, policies, roles, auth methods,
-- binding rules, and login/logout with an auth method. Results are Consul's own JSON objects
-- (AccessorID, SecretID, Policies, ...), in the 0.2 return convention.

local consul = require "coord.consul"
local args = require "coord.args"
local url = require "coord.url"

local M = {}

local ACL = { __name = "coord.consul.acl" }
ACL.__index = ACL

function M.new(client)
  return setmetatable({ client = client }, ACL)
end

-- Consul 1.8 answers a read of an unknown token or policy with 403 "ACL not found", the very
-- answer it gives when the token the caller sends is unknown. Which one it is, token/self with
-- that token tells: when it succeeds the thing read is absent (nil, nil, meta of the read);
-- when it fails, its error (the caller's token is unknown) is returned.
local function read_ambiguous(client, path, opts)
  local o = consul._call_opts(opts)
  o.ok = { 403 }
  local res, err = client:_call("GET", path, o)
  if not res then return nil, err end
  if res.status < 300 then return res.body, nil, res.meta end
  if type(res.body) ~= "string" or not res.body:find("ACL not found", 1, true) then
    return client:_error(res, "GET", path)
  end
  local token = opts.token
  if token == nil then token = client.token or nil end
  if token ~= nil and token ~= "" then
    local _, serr = client:_read("/v1/acl/token/self", { token = token, dc = opts.dc, timeout = opts.timeout })
    if serr then return nil, serr end
  end
  return nil, nil, res.meta
end

-- The kinds of ACL object with create/read/update/delete/list calls: the path of one object,
-- the path of the list, how an ID is checked, how an absent object is answered (403 for
-- tokens and policies in 1.8, 404 for the others) and the list filters (option -> query name).
local kinds = {
  token = { path = "/v1/acl/token", list = "/v1/acl/tokens", id = url.uuid, ambiguous = true,
    filters = { policy = "policy", role = "role", auth_method = "authmethod" } },
  policy = { path = "/v1/acl/policy", list = "/v1/acl/policies", id = url.uuid, ambiguous = true, filters = {} },
  role = { path = "/v1/acl/role", list = "/v1/acl/roles", id = url.uuid, filters = { policy = "policy" } },
  auth_method = { path = "/v1/acl/auth-method", list = "/v1/acl/auth-methods", id = url.segment, filters = {} },
  binding_rule = { path = "/v1/acl/binding-rule", list = "/v1/acl/binding-rules", id = url.uuid,
    filters = { auth_method = "authmethod" } },
}

local function filters_of(opts, filters, fname)
  local q = {}
  for name, qname in pairs(filters) do q[qname] = args.option(opts, name, "string", fname) end
  return q
end

for kind, k in pairs(kinds) do
  local create, read, update, delete, list = kind .. "_create", kind .. "_read", kind .. "_update",
    kind .. "_delete", kind .. "_list"

  -- PUT path with def as the JSON body: the object made, with its ID.
  ACL[create] = function(self, def, opts)
    args.check(def, "table", 1, create)
    return self.client:_write(k.path, def, args.opts(opts, 2, create))
  end

  -- The object with this ID (an auth method: this name); nil, nil, meta when absent.
  ACL[read] = function(self, id, opts)
    local seg = k.id(id, 1, read)
    opts = args.opts(opts, 2, read)
    if k.ambiguous then return read_ambiguous(self.client, k.path .. "/" .. seg, opts) end
    return self.client:_read(k.path .. "/" .. seg, opts, nil, { 404 })
  end

  -- Replaces the object's definition with def: the object as updated.
  ACL[update] = function(self, id, def, opts)
    local seg = k.id(id, 1, update)
    args.check(def, "table", 2, update)
    return self.client:_write(k.path .. "/" .. seg, def, args.opts(opts, 3, update))
  end

  -- Deletes the object: true (also when it did not exist).
  ACL[delete] = function(self, id, opts)
    local seg = k.id(id, 1, delete)
    return self.client:_write(k.path .. "/" .. seg, nil, args.opts(opts, 2, delete), nil, "DELETE")
  end

  -- The list of objects (tokens and policies listed without their secrets and rules).
  ACL[list] = function(self, opts)
    opts = args.opts(opts, 1, list)
    return self.client:_read(k.list, opts, filters_of(opts, k.filters, list))
  end
end

--- A new token with the policies, roles and description of the token with accessor ID id
--- (description replaces the description when given).
function ACL:token_clone(id, description, opts)
  local seg = url.uuid(id, 1, "token_clone")
  args.check(description, "string", 2, "token_clone", true)
  return self.client:_write("/v1/acl/token/" .. seg .. "/clone", { Description = description },
    args.opts(opts, 3, "token_clone"))
end

--- The token the client sends (or opts.token), as Consul knows it.
function ACL:token_self(opts)
  return self.client:_read("/v1/acl/token/self", args.opts(opts, 1, "token_self"))
end

--- Exchanges bearer_token (a JWT, a Kubernetes service account token) for a Consul token
--- through the auth method named auth_method; meta (a table of strings) is attached to the
--- token. Returns the new token (its SecretID is the token to use). Login sends no token.
function ACL:login(auth_method, bearer_token, meta, opts)
  args.check(auth_method, "string", 1, "login")
  args.check(bearer_token, "string", 2, "login")
  args.check(meta, "table", 3, "login", true)
  opts = args.opts(opts, 4, "login")
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.token = ""
  return self.client:_write("/v1/acl/login", { AuthMethod = auth_method, BearerToken = bearer_token, Meta = meta },
    o, nil, "POST")
end

--- Deletes a token made by login: token (default: the client's token). Returns true.
function ACL:logout(token, opts)
  args.check(token, "string", 1, "logout", true)
  opts = args.opts(opts, 2, "logout")
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  if token ~= nil then o.token = token end
  return self.client:_write("/v1/acl/logout", nil, o, nil, "POST")
end

args.methods(ACL)

return M
