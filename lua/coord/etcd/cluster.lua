-- coord.etcd.cluster: cluster and maintenance calls: members, endpoint status, version,
-- health.

local proto = require "coord.etcd.proto"
local args = require "coord.args"

local header_of, int, uint = proto.header, proto.int, proto.uint

return function(Client, E)
  local check = args.check

  -- A member's URL is a base URL: http(s)://host[:port][/path prefix], no query or credentials.
  local function check_endpoint(url, fname)
    check(url, "string", 1, fname, true)
    if url and not url:find("^https?://[%w%.%-%[%]:]+[%w%.%-_~/]*$") then
      error(("bad argument #1 to '%s' (endpoint URL http(s)://host:port[/path] expected, got %q)"):format(fname, url:sub(1, 60)), 3)
    end
  end

  -- A call to one member (url) or, without one, to the current endpoint.
  local function call(self, url, path, body)
    if url == nil then
      if body then return self:_post(path, body, { idempotent = true }) end
      local t, err = self:_target()
      if not t then return nil, err end
      url = t.endpoint
    end
    return self:_at(url, path, body)
  end

  local function urls(list)
    local out = {}
    for i, u in ipairs(list or {}) do out[i] = u end
    return out
  end

  -- A member table from the gateway's JSON member.
  local function member_of(m)
    return { id = uint(m.ID), name = m.name or "", peer_urls = urls(m.peerURLs),
      client_urls = urls(m.clientURLs), is_learner = m.isLearner == true }
  end

  --- The cluster's members: `list, nil, header`, a list of {id, name, peer_urls,
  --- client_urls, is_learner}.
  function Client:members()
    local j, err = self:_post("/v3/cluster/member/list", {}, { idempotent = true })
    if not j then return nil, err end
    local list = {}
    for i, m in ipairs(j.members or {}) do list[i] = member_of(m) end
    return list, nil, header_of(j.header)
  end

  --- One member's status (endpoint: its URL; default the current endpoint): {version,
  --- db_size, db_size_in_use, leader, raft_index, raft_term, raft_applied_index, member_id,
  --- is_learner, errors}, nil, header.
  function Client:status(endpoint)
    check_endpoint(endpoint, "status")
    local j, err = call(self, endpoint, "/v3/maintenance/status", {})
    if not j then return nil, err end
    local h = header_of(j.header)
    return {
      version = j.version, db_size = int(j.dbSize), db_size_in_use = int(j.dbSizeInUse),
      leader = uint(j.leader), raft_index = int(j.raftIndex), raft_term = int(j.raftTerm),
      raft_applied_index = int(j.raftAppliedIndex), member_id = h.member_id,
      is_learner = j.isLearner == true, errors = j.errors or {},
    }, nil, h
  end

  --- The server and cluster versions of one member (default the current endpoint):
  --- {server, cluster}.
  function Client:version(endpoint)
    check_endpoint(endpoint, "version")
    local j, err = call(self, endpoint, "/version")
    if not j then return nil, err end
    return { server = j.etcdserver, cluster = j.etcdcluster }
  end

  --- Whether one member (default the current endpoint) is healthy (has a leader, no
  --- alarm): `true`, or `false, nil, reason` (a string); nil, err when it cannot be asked.
  function Client:health(endpoint)
    check_endpoint(endpoint, "health")
    local j, err = call(self, endpoint, "/health")
    if not j then
      -- an unhealthy member answers 503 with the same JSON body
      if err.status == 503 then return false, nil, err.message end
      return nil, err
    end
    if j.health == "true" or j.health == true then return true end
    return false, nil, j.reason or ""
  end

  -- member administration (member_add, member_remove, member_update, member_promote)

  E._check_endpoint = check_endpoint
  local args = require "coord.args"
  local u64tostring = require("coord.core").u64tostring

  -- Peer URLs: one URL or a list of them, each http(s)://host:port.
  local function peer_urls(v, i, fname)
    if type(v) == "string" then v = { v } end
    args.check(v, "table", i, fname)
    if #v == 0 then error(("bad argument #%d to '%s' (at least one peer URL expected)"):format(i, fname), 3) end
    for k, u in ipairs(v) do
      if type(u) ~= "string" or not u:find("^https?://[%w%.%-%[%]:]+/?$") then
        error(("bad argument #%d to '%s' (peer URL http(s)://host:port expected at index %d)"):format(i, fname, k), 3)
      end
    end
    return v
  end

  -- etcd refuses to promote a learner whose log is behind the leader's (code 9, HTTP 412):
  -- "not_ready" says it is worth asking again once the learner has caught up; promoting a
  -- voting member can never work ("invalid").
  local function promote_error(err)
    if err.message:find("in sync with leader", 1, true) then
      err.kind = "not_ready"
    elseif err.message:find("can only promote a learner", 1, true) then
      err.kind = "invalid"
    end
    return err
  end

  --- Adds a member with these peer URLs (one or a list); opts: learner (a non-voting member
  --- that can be promoted once it has caught up). Returns the new member {id, name (empty
  --- until it starts), peer_urls, client_urls, is_learner}, nil, header. The new member's
  --- etcd must then be started with --initial-cluster-state existing.
  function Client:member_add(list, opts)
    list = peer_urls(list, 1, "member_add")
    opts = args.opts(opts, 2, "member_add")
    local learner = args.option(opts, "learner", "boolean", "member_add")
    local j, err = self:_post("/v3/cluster/member/add", { peerURLs = list, isLearner = learner or nil })
    if not j then return nil, err end
    return member_of(type(j.member) == "table" and j.member or {}), nil, header_of(j.header)
  end

  --- Removes member id from the cluster. Returns true, nil, header; an unknown id is a
  --- "not_found" error.
  function Client:member_remove(id)
    args.check(id, "integer", 1, "member_remove")
    local j, err = self:_post("/v3/cluster/member/remove", { ID = u64tostring(id) })
    if not j then return nil, err end
    return true, nil, header_of(j.header)
  end

  --- Replaces the peer URLs of member id (one URL or a list). Returns true, nil, header.
  function Client:member_update(id, list)
    args.check(id, "integer", 1, "member_update")
    list = peer_urls(list, 2, "member_update")
    local j, err = self:_post("/v3/cluster/member/update", { ID = u64tostring(id), peerURLs = list })
    if not j then return nil, err end
    return true, nil, header_of(j.header)
  end

  --- Makes learner id a voting member. Returns true, nil, header; a learner still catching
  --- up with the leader is a "not_ready" error (ask again later).
  function Client:member_promote(id)
    args.check(id, "integer", 1, "member_promote")
    local j, err = self:_post("/v3/cluster/member/promote", { ID = u64tostring(id) })
    if not j then return nil, promote_error(err) end
    return true, nil, header_of(j.header)
  end
end
