-- coord.etcd.grpc_codes: the gRPC status code of each error message etcd's server sends, for
-- replies that lost their code on the way. etcd's grpc-proxy forwards a call with etcd's Go
-- client, which turns each error status into a plain Go error; the proxy's gRPC server then
-- answers code 2 (Unknown) with the original message. etcd's Go client maps such errors back
-- by their message text (package rpctypes); so does this table. The messages and codes are
-- facts of etcd's API (api/v3rpc/rpctypes/error.go, 3.4 to 3.6).

local M = {}

local INVALID, NOT_FOUND, PERMISSION, EXHAUSTED, PRECONDITION, OUT_OF_RANGE, UNAVAILABLE, DATA_LOSS, UNAUTHENTICATED =
  3, 5, 7, 8, 9, 11, 14, 15, 16

local by_message = {
  ["etcdserver: key is not provided"] = INVALID,
  ["etcdserver: key not found"] = INVALID,
  ["etcdserver: value is provided"] = INVALID,
  ["etcdserver: lease is provided"] = INVALID,
  ["etcdserver: ttl is 0"] = INVALID,
  ["etcdserver: too many operations in txn request"] = INVALID,
  ["etcdserver: duplicate key given in txn request"] = INVALID,
  ["etcdserver: mvcc: required revision has been compacted"] = OUT_OF_RANGE,
  ["etcdserver: mvcc: required revision is a future revision"] = OUT_OF_RANGE,
  ["etcdserver: mvcc: database space exceeded"] = EXHAUSTED,
  ["etcdserver: requested lease not found"] = NOT_FOUND,
  ["etcdserver: lease already exists"] = PRECONDITION,
  ["etcdserver: too large lease TTL"] = OUT_OF_RANGE,
  ["etcdserver: member ID already exist"] = PRECONDITION,
  ["etcdserver: Peer URLs already exists"] = PRECONDITION,
  ["etcdserver: re-configuration failed due to not enough started members"] = PRECONDITION,
  ["etcdserver: given member URLs are invalid"] = INVALID,
  ["etcdserver: member not found"] = NOT_FOUND,
  ["etcdserver: can only promote a learner member"] = PRECONDITION,
  ["etcdserver: can only promote a learner member which is in sync with leader"] = PRECONDITION,
  ["etcdserver: too many learner members in cluster"] = PRECONDITION,
  ["etcdserver: request is too large"] = INVALID,
  ["etcdserver: too many requests"] = EXHAUSTED,
  ["etcdserver: root user does not exist"] = PRECONDITION,
  ["etcdserver: root user does not have root role"] = PRECONDITION,
  ["etcdserver: user name already exists"] = PRECONDITION,
  ["etcdserver: user name is empty"] = INVALID,
  ["etcdserver: user name not found"] = PRECONDITION,
  ["etcdserver: role name already exists"] = PRECONDITION,
  ["etcdserver: role name not found"] = PRECONDITION,
  ["etcdserver: role name is empty"] = INVALID,
  ["etcdserver: authentication failed, invalid user ID or password"] = INVALID,
  ["etcdserver: permission denied"] = PERMISSION,
  ["etcdserver: role is not granted to the user"] = PRECONDITION,
  ["etcdserver: permission is not granted to the role"] = PRECONDITION,
  ["etcdserver: authentication is not enabled"] = PRECONDITION,
  ["etcdserver: invalid auth token"] = UNAUTHENTICATED,
  ["etcdserver: invalid auth management"] = INVALID,
  ["etcdserver: no leader"] = UNAVAILABLE,
  ["etcdserver: not leader"] = PRECONDITION,
  ["etcdserver: leader changed"] = UNAVAILABLE,
  ["etcdserver: not capable"] = UNAVAILABLE,
  ["etcdserver: server stopped"] = UNAVAILABLE,
  ["etcdserver: request timed out"] = UNAVAILABLE,
  ["etcdserver: request timed out, possibly due to previous leader failure"] = UNAVAILABLE,
  ["etcdserver: request timed out, possibly due to connection lost"] = UNAVAILABLE,
  ["etcdserver: unhealthy cluster"] = UNAVAILABLE,
  ["etcdserver: corrupt cluster"] = DATA_LOSS,
  ["etcdserver: rpc not supported for learner"] = UNAVAILABLE,
  ["etcdserver: bad leader transferee"] = PRECONDITION,
}
M.by_message = by_message

--- The code a reply with gRPC status `code` and `message` stands for: etcd's own code for
--- one of etcd's error messages that arrived as code 2 (Unknown), else `code`.
function M.code(code, message)
  if code == 2 then return by_message[message] or code end
  return code
end

return M
