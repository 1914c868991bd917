-- coord.consul.acl against a real Consul 1.8.7 dev agent with ACLs on (default deny): tokens,
-- policies, roles, JWT login/logout, and set_token reaching a watch that is already running.
local coord = require "coord"
local core = require "coord.core"
local consul_mod = require "coord.consul"
local servers = require "servers"
local helpers = require "helpers"

local master = "6d4a3f1e-acl0-4c6b-9e55-coordmaster1"

local function b64url(s)
  return (core.b64encode(s):gsub("+", "-"):gsub("/", "_"):gsub("=", ""))
end

-- An RSA key pair made with openssl: the private key's path and the public key's PEM text.
local function key_pair(dir, name)
  local key, pub = dir .. "/" .. name .. ".key", dir .. "/" .. name .. ".pub"
  local ok, out = servers.sh(("(openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out '%s' && openssl pkey -in '%s' -pubout -out '%s')")
    :format(key, key, pub))
  assert(ok, out)
  return key, servers.read_file(pub)
end

-- A JWT (RS256) with these claims, signed with the private key at key_path.
local function jwt(dir, key_path, claims)
  local input = b64url(core.json_encode { alg = "RS256", typ = "JWT" }) .. "." .. b64url(core.json_encode(claims))
  local f = assert(io.open(dir .. "/input", "wb"))
  f:write(input)
  f:close()
  local ok, out = servers.sh(("openssl dgst -sha256 -sign '%s' -out '%s/sig' '%s/input'"):format(key_path, dir, dir))
  assert(ok, out)
  return input .. "." .. b64url(servers.read_file(dir .. "/sig"))
end

describe("coord.consul.acl", function()
  local server, admin
  setup(function()
    server = servers.consul { acl = master }
    admin = consul_mod.new { address = server.address, token = master }
  end)
  teardown(function() server:stop() end)

  it("creates, reads, updates, clones, lists and deletes tokens", function()
    local acl = admin.acl
    local policy = assert(acl:policy_create { Name = "tok-kv", Rules = 'key_prefix "tok/" { policy = "write" }' })
    local tok, err, meta = acl:token_create { Description = "first", Policies = { { ID = policy.ID } } }
    assert.is_nil(err)
    assert.are.equal("consul.meta", getmetatable(meta).__name)
    assert.are.equal("first", tok.Description)
    assert.matches("^%x+%-", tok.AccessorID)

    local got, gerr, gmeta = acl:token_read(tok.AccessorID)
    assert.is_nil(gerr)
    assert.are.equal(tok.SecretID, got.SecretID)
    assert.are.equal("tok-kv", got.Policies[1].Name)
    assert.are.equal("integer", math.type(gmeta.index))

    local up = assert(acl:token_update(tok.AccessorID, { Description = "renamed", Policies = { { ID = policy.ID } } }))
    assert.are.equal("renamed", up.Description)
    assert.are.equal(tok.SecretID, up.SecretID, "an update keeps the secret")

    local copy = assert(acl:token_clone(tok.AccessorID, "the copy"))
    assert.are_not.equal(tok.AccessorID, copy.AccessorID)
    assert.are.equal("the copy", copy.Description)
    assert.are.equal(policy.ID, copy.Policies[1].ID)

    local list = assert(acl:token_list())
    local seen = {}
    for _, t in ipairs(list) do seen[t.AccessorID] = t.Description end
    assert.are.equal("renamed", seen[tok.AccessorID])
    assert.are.equal("the copy", seen[copy.AccessorID])
    local by_policy = assert(acl:token_list { policy = policy.ID })
    assert.are.equal(2, #by_policy)

    -- the token works, and token_self says who it is
    local user = consul_mod.new { address = server.address, token = tok.SecretID }
    assert.is_true((user.kv:put("tok/x", "1")))
    local me = assert(user.acl:token_self())
    assert.are.equal(tok.AccessorID, me.AccessorID)

    local ok, derr, dmeta = acl:token_delete(tok.AccessorID)
    assert.is_true(ok)
    assert.is_nil(derr)
    assert.is_truthy(tostring(dmeta):find("consul.meta{", 1, true))
    local gone, gone_err, gone_meta = acl:token_read(tok.AccessorID)
    assert.is_nil(gone)
    assert.is_nil(gone_err)
    assert.are.equal(403, gone_meta.status, "Consul 1.8 answers an absent token with 403")
    local _, uerr = user.kv:put("tok/x", "2")
    assert.are.equal("auth", uerr.kind)
    assert.is_true((acl:token_delete(copy.AccessorID)))
    assert.is_true((acl:policy_delete(policy.ID)))
  end)

  it("tells an absent token from a caller whose own token is unknown", function()
    local stranger = consul_mod.new { address = server.address, token = "b1f0e2c4-0000-4000-8000-000000000000" }
    local v, err = stranger.acl:token_read("00000000-0000-4000-8000-0000000000aa")
    assert.is_nil(v)
    assert.are.equal("auth", err.kind)
    assert.are.equal(403, err.status)
    assert.matches("ACL not found", err.message)
    local _, serr = stranger.acl:token_self()
    assert.are.equal("auth", serr.kind)
    -- a token without acl:read is denied, not told "absent"
    local anon = consul_mod.new { address = server.address }
    local _, perr = anon.acl:token_read("00000000-0000-4000-8000-0000000000aa")
    assert.are.equal("permission", perr.kind)
    assert.matches("Permission denied", perr.message)
    local p, perr2, pmeta = admin.acl:policy_read("00000000-0000-4000-8000-0000000000bb")
    assert.is_nil(p)
    assert.is_nil(perr2)
    assert.are.equal(403, pmeta.status)
  end)

  it("creates, reads, updates, lists and deletes policies and roles", function()
    local acl = admin.acl
    local p = assert(acl:policy_create { Name = "pol-a", Description = "a", Rules = 'key "pa" { policy = "read" }' })
    local got = assert(acl:policy_read(p.ID))
    assert.are.equal('key "pa" { policy = "read" }', got.Rules)
    local up = assert(acl:policy_update(p.ID, { Name = "pol-a", Description = "b", Rules = 'key "pa" { policy = "write" }' }))
    assert.are.equal("b", up.Description)
    local names = {}
    for _, x in ipairs(assert(acl:policy_list())) do names[x.Name] = x.ID end
    assert.are.equal(p.ID, names["pol-a"])
    assert.is_truthy(names["global-management"])

    local r, rerr, rmeta = acl:role_create { Name = "role-a", Policies = { { ID = p.ID } } }
    assert.is_nil(rerr)
    assert.are.equal(200, rmeta.status)
    assert.are.equal("pol-a", assert(acl:role_read(r.ID)).Policies[1].Name)
    local r2 = assert(acl:role_update(r.ID, { Name = "role-a", Description = "updated", Policies = { { ID = p.ID } } }))
    assert.are.equal("updated", r2.Description)
    local roles = assert(acl:role_list { policy = p.ID })
    assert.are.equal(1, #roles)
    assert.are.equal(r.ID, roles[1].ID)
    -- a token holding the role
    local t = assert(acl:token_create { Roles = { { ID = r.ID } } })
    assert.are.equal(1, #assert(acl:token_list { role = r.ID }))
    assert.is_true((acl:token_delete(t.AccessorID)))

    assert.is_true((acl:role_delete(r.ID)))
    local none, nerr, nmeta = acl:role_read(r.ID)
    assert.is_nil(none)
    assert.is_nil(nerr)
    assert.are.equal(404, nmeta.status)
    assert.is_true((acl:policy_delete(p.ID)))
    local pn, pnerr = acl:policy_read(p.ID)
    assert.is_nil(pn)
    assert.is_nil(pnerr)
  end)

  it("reports a refused definition as an error (Consul 1.8.7 answers bad rules with a 500)", function()
    local v, err = admin.acl:policy_create { Name = "bad", Rules = "this is not HCL {" }
    assert.is_nil(v)
    assert.are.equal("http", err.kind)
    assert.are.equal(500, err.status)
    assert.matches("Failed to parse ACL rules", err.message)
    for _, x in ipairs(assert(admin.acl:policy_list())) do assert.are_not.equal("bad", x.Name) end
  end)

  it("raises on wrong arguments", function()
    local acl = admin.acl
    assert.has_error(function() acl:token_read(5) end, "bad argument #1 to 'token_read' (string expected, got number)")
    assert.has_error(function() acl:token_read("abc") end, 'bad argument #1 to \'token_read\' (UUID expected, got "abc")')
    assert.has_error(function() acl:token_create("x") end, "bad argument #1 to 'token_create' (table expected, got string)")
    assert.has_error(function() acl:policy_update("00000000-0000-4000-8000-0000000000bb", 1) end,
      "bad argument #2 to 'policy_update' (table expected, got integer)")
    assert.has_error(function() acl:token_list { policy = 1 } end,
      "bad option 'policy' to 'token_list' (string expected, got integer)")
    assert.has_error(function() acl:login("m") end, "bad argument #2 to 'login' (string expected, got nil)")
    assert.has_error(function() acl:logout(5) end, "bad argument #1 to 'logout' (string or nil expected, got integer)")
    assert.has_error(function() acl.token_self() end, "calling 'token_self' on bad self (use ':')")
  end)

  describe("login with a JWT auth method", function()
    local dir, key, other_key
    setup(function()
      dir = servers.tmpdir()
      local pub
      key, pub = key_pair(dir, "issuer")
      other_key = key_pair(dir, "other")
      assert(admin.acl:policy_create { Name = "login-kv", Rules = 'key_prefix "login/" { policy = "write" }' })
      assert(admin.acl:role_create { Name = "login-role", Policies = { { Name = "login-kv" } } })
      local m = assert(admin.acl:auth_method_create {
        Name = "test-jwt", Type = "jwt", Description = "static key",
        Config = { JWTValidationPubKeys = { pub }, BoundIssuer = "coord-test", BoundAudiences = { "consul" },
          ClaimMappings = { sub = "user" } },
      })
      assert.are.equal("test-jwt", m.Name)
      assert(admin.acl:binding_rule_create { AuthMethod = "test-jwt", BindType = "role", BindName = "login-role",
        Selector = 'value.user == "alice"' })
    end)
    teardown(function() servers.rmdir(dir) end)

    local function claims(sub)
      local now = os.time()
      return { iss = "coord-test", aud = { "consul" }, sub = sub, iat = now - 5, nbf = now - 5, exp = now + 600 }
    end

    it("exchanges a signed JWT for a token that logout deletes", function()
      local anon = consul_mod.new { address = server.address }
      local tok, err, meta = anon.acl:login("test-jwt", jwt(dir, key, claims("alice")), { app = "spec" })
      assert.is_nil(err)
      assert.are.equal("consul.meta", getmetatable(meta).__name)
      assert.are.equal("test-jwt", tok.AuthMethod)
      assert.are.equal("login-role", tok.Roles[1].Name)
      local user = consul_mod.new { address = server.address, token = tok.SecretID }
      assert.is_true((user.kv:put("login/k", "v")))
      local me = assert(user.acl:token_self())
      assert.are.equal(tok.AccessorID, me.AccessorID)
      local rules = assert(admin.acl:binding_rule_list { auth_method = "test-jwt" })
      assert.are.equal(1, #rules)
      assert.are.equal("test-jwt", assert(admin.acl:auth_method_read("test-jwt")).Name)
      assert.is_true((user.acl:logout()))
      local _, serr = user.acl:token_self()
      assert.are.equal("auth", serr.kind)
      assert.is_nil((admin.acl:token_read(tok.AccessorID)))
    end)

    it("refuses a JWT signed by another key, and an unknown auth method", function()
      local anon = consul_mod.new { address = server.address }
      local v, err = anon.acl:login("test-jwt", jwt(dir, other_key, claims("alice")))
      assert.is_nil(v)
      -- Consul 1.8.7 answers a signature it cannot verify with a 500
      assert.are.equal(500, err.status)
      assert.are.equal("http", err.kind)
      assert.matches("no known key successfully validated the token signature", err.message)
      -- a valid JWT that no binding rule matches (bob) is denied
      local v2, err2 = anon.acl:login("test-jwt", jwt(dir, key, claims("bob")))
      assert.is_nil(v2)
      assert.are.equal(403, err2.status)
      assert.are.equal("permission", err2.kind)
      assert.matches("Permission denied", err2.message)
      local v3, err3 = anon.acl:login("no-such-method", jwt(dir, key, claims("alice")))
      assert.is_nil(v3)
      assert.are.equal("auth", err3.kind)
      assert.matches("ACL not found", err3.message)
      -- logout without a token, and with a token login did not make
      local v4, err4 = anon.acl:logout()
      assert.is_nil(v4)
      assert.are.equal("auth", err4.kind)
      assert.matches("ACL not found", err4.message)
      local v5, err5 = admin.acl:logout()
      assert.is_nil(v5)
      assert.are.equal("permission", err5.kind)
    end)
  end)

  it("keeps a running watch going with the token set_token gives it", function()
    local acl = admin.acl
    assert(acl:policy_create { Name = "rot-read", Rules = 'key_prefix "rot/" { policy = "read" }' })
    local a = assert(acl:token_create { Description = "A", Policies = { { Name = "rot-read" } } })
    local b = assert(acl:token_create { Description = "B", Policies = { { Name = "rot-read" } } })
    assert(admin.kv:put("rot/k", "1"))
    local c = consul_mod.new { address = server.address, token = a.SecretID }
    local control = consul_mod.new { address = server.address, token = a.SecretID }
    coord.run(function()
      local q, cq = coord.queue(), coord.queue()
      local w = c.kv:watch("rot/k", { max_backoff = 0.5 })
      local cw = control.kv:watch("rot/k", { max_backoff = 0.5 })
      local t = coord.spawn(function()
        for e in w do
          q:put(e.value)
          if e.value == "3" then break end
        end
      end)
      local ct = coord.spawn(function()
        for e in cw do cq:put(e.value) end
        cq:put(cw.error or "ended")
      end)
      assert.are.equal("1", coord.timeout(10, q.get, q))
      assert.are.equal("1", coord.timeout(10, cq.get, cq))
      -- A is deleted while both watches wait on a blocking read sent with it
      assert.is_true((acl:token_delete(a.AccessorID)))
      assert.is_true(c:set_token(b.SecretID))
      assert(admin.kv:put("rot/k", "2"))
      local got = {}
      while got[#got] ~= "3" do
        local v = assert(coord.timeout(20, q.get, q))
        got[#got + 1] = v
        if v == "2" then assert(admin.kv:put("rot/k", "3")) end
      end
      assert.are.same({ "2", "3" }, got)
      assert.is_true(coord.timeout(20, t.join, t))
      -- the watch that kept A ends with Consul's refusal of A
      local last
      repeat last = assert(coord.timeout(20, cq.get, cq)) until type(last) ~= "string"
      assert.are.equal("auth", last.kind)
      assert.are.equal(403, last.status)
      assert.is_true(coord.timeout(20, ct.join, ct))
    end)
    assert.are.equal(b.AccessorID, assert(c.acl:token_self()).AccessorID)
  end)

  it("keeps a mirror following with the token set_token gives it", function()
    local acl = admin.acl
    assert(acl:policy_create { Name = "mir-read", Rules = 'key_prefix "mir/" { policy = "read" }' })
    local a = assert(acl:token_create { Description = "A", Policies = { { Name = "mir-read" } } })
    local b = assert(acl:token_create { Description = "B", Policies = { { Name = "mir-read" } } })
    assert(admin.kv:put("mir/k", "1"))
    local c = consul_mod.new { address = server.address, token = a.SecretID }
    coord.run(function()
      local m <close> = coord.mirror(c, "mir/")
      assert(m:wait(function(mm) return mm:get("mir/k") == "1" end, 20))
      assert.is_true(c:set_token(b.SecretID))
      assert.is_true((acl:token_delete(a.AccessorID)))
      assert(admin.kv:put("mir/k", "2"))
      assert(m:wait(function(mm) return mm:get("mir/k") == "2" end, 20))
      assert(admin.kv:put("mir/k", "3"))
      assert(m:wait(function(mm) return mm:get("mir/k") == "3" end, 20))
      local st = m:status()
      assert.is_true(st.synced)
      assert.is_nil(st.error)
    end)
  end)

  it("sends a refused call again when set_token replaced its token while it was out", function()
    local peer = helpers.start_peer { upstream = server.port }
    assert(admin.acl:policy_create { Name = "late-read", Rules = 'key_prefix "late/" { policy = "read" }' })
    local b = assert(admin.acl:token_create { Description = "late", Policies = { { Name = "late-read" } } })
    assert(admin.kv:put("late/k", "v"))
    local c = consul_mod.new { address = "127.0.0.1:" .. peer.port, token = "0badc0de-0000-4000-8000-000000000000" }
    local entry, n = coord.run(function()
      local started = coord.queue()
      local t = coord.spawn(function()
        started:put(true)
        return c.kv:get("late/k") -- sent with the unknown token: Consul answers 403
      end)
      started:get()
      c:set_token(b.SecretID) -- before that answer arrives
      local ok, e = t:join()
      assert.is_true(ok)
      return e, peer.count("/v1/kv/late/k")
    end)
    peer.stop()
    assert.are.equal("v", entry and entry.value)
    assert.are.equal(2, n, "one refused request with the old token, one with the new")
  end)
end)
