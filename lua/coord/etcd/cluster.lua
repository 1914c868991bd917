-- coord.etcd.cluster: cluster and maintenance calls: members, endpoint status, version,
-- health.

local proto = require "coord.etcd.proto"
local args = require "coord.args"

local header_of, int, uint = proto.header, proto.int, proto.uint

return function(Client, E)
  local check = args.check

  -- A member's URL is a base URL: http(s)://host[:port], no path, query or credentials.
  local function check_endpoint(url, fname)
    check(url, "string", 1, fname, true)
    if url and not url:find("^https?://[%w%.%-%[%]:]+/?$") then
      error(("bad argument #1 to '%s' (endpoint URL http(s)://host:port expected, got %q)"):format(fname, url:sub(1, 60)), 3)
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

  --- The cluster's members: `list, nil, header`, a list of {id, name, peer_urls,
  --- client_urls, is_learner}.
  function Client:members()
    local j, err = self:_post("/v3/cluster/member/list", {}, { idempotent = true })
    if not j then return nil, err end
    local list = {}
    for i, m in ipairs(j.members or {}) do
      list[i] = { id = uint(m.ID), name = m.name or "", peer_urls = urls(m.peerURLs),
        client_urls = urls(m.clientURLs), is_learner = m.isLearner == true }
    end
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
end
