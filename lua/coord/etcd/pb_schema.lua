-- coord.etcd.pb_schema: etcd v3's protobuf messages, for the codec in coord.core (csrc/pb.c).
--
-- Written from etcd's published protos (etcd-io/etcd at c34dc7e, 2026-08: api/mvccpb/kv.proto,
-- api/authpb/auth.proto, api/etcdserverpb/rpc.proto, server/etcdserver/api/v3lock/v3lockpb/v3lock.proto,
-- server/etcdserver/api/v3election/v3electionpb/v3election.proto). Field numbers are the protos'; the
-- fields newer than 3.4 (for instance HashKVResponse.hash_revision, 3.6) are simply absent in replies from
-- older servers. The package prefixes (mvccpb., authpb., etcdserverpb.) are dropped: no two names collide.
--
-- The format, read by core.pb_compile:
--   messages[Name] = { field, ... } where a field is
--     { number, "name", "type" [, "repeated"] [, oneof = "group"] }
--   type: a scalar (int32 int64 uint32 uint64 sint32 sint64 bool enum fixed32 fixed64 sfixed32
--   sfixed64 float double string bytes) or the name of another message here. Enums travel as
--   integers ("enum" is int32 on the wire); their names are in `enums` for whoever wants them.
--   Fields of one oneof share a group name: at most one of them may be set when encoding, and
--   the last one seen wins when decoding.
--
-- M.types = core.pb_compile(M.messages): the compiled handles by message name, for
--   core.pb_encode(M.types.RangeRequest, t) and core.pb_decode(M.types.RangeResponse, bytes).
-- etcd's protos have no map fields.

local core = require "coord.core"

local M = {}

M.messages = {
  KeyValue = {
    { 1, "key", "bytes" },
    { 2, "create_revision", "int64" },
    { 3, "mod_revision", "int64" },
    { 4, "version", "int64" },
    { 5, "value", "bytes" },
    { 6, "lease", "int64" },
  },
  Event = {
    { 1, "type", "enum" },
    { 2, "kv", "KeyValue" },
    { 3, "prev_kv", "KeyValue" },
  },
  UserAddOptions = {
    { 1, "no_password", "bool" },
  },
  User = {
    { 1, "name", "bytes" },
    { 2, "password", "bytes" },
    { 3, "roles", "string", "repeated" },
    { 4, "options", "UserAddOptions" },
  },
  Permission = {
    { 1, "permType", "enum" },
    { 2, "key", "bytes" },
    { 3, "range_end", "bytes" },
  },
  Role = {
    { 1, "name", "bytes" },
    { 2, "keyPermission", "Permission", "repeated" },
  },
  ResponseHeader = {
    { 1, "cluster_id", "uint64" },
    { 2, "member_id", "uint64" },
    { 3, "revision", "int64" },
    { 4, "raft_term", "uint64" },
  },
  RangeRequest = {
    { 1, "key", "bytes" },
    { 2, "range_end", "bytes" },
    { 3, "limit", "int64" },
    { 4, "revision", "int64" },
    { 5, "sort_order", "enum" },
    { 6, "sort_target", "enum" },
    { 7, "serializable", "bool" },
    { 8, "keys_only", "bool" },
    { 9, "count_only", "bool" },
    { 10, "min_mod_revision", "int64" },
    { 11, "max_mod_revision", "int64" },
    { 12, "min_create_revision", "int64" },
    { 13, "max_create_revision", "int64" },
  },
  RangeResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "kvs", "KeyValue", "repeated" },
    { 3, "more", "bool" },
    { 4, "count", "int64" },
  },
  PutRequest = {
    { 1, "key", "bytes" },
    { 2, "value", "bytes" },
    { 3, "lease", "int64" },
    { 4, "prev_kv", "bool" },
    { 5, "ignore_value", "bool" },
    { 6, "ignore_lease", "bool" },
  },
  PutResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "prev_kv", "KeyValue" },
  },
  DeleteRangeRequest = {
    { 1, "key", "bytes" },
    { 2, "range_end", "bytes" },
    { 3, "prev_kv", "bool" },
  },
  DeleteRangeResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "deleted", "int64" },
    { 3, "prev_kvs", "KeyValue", "repeated" },
  },
  RequestOp = {
    { 1, "request_range", "RangeRequest", oneof = "request" },
    { 2, "request_put", "PutRequest", oneof = "request" },
    { 3, "request_delete_range", "DeleteRangeRequest", oneof = "request" },
    { 4, "request_txn", "TxnRequest", oneof = "request" },
  },
  ResponseOp = {
    { 1, "response_range", "RangeResponse", oneof = "response" },
    { 2, "response_put", "PutResponse", oneof = "response" },
    { 3, "response_delete_range", "DeleteRangeResponse", oneof = "response" },
    { 4, "response_txn", "TxnResponse", oneof = "response" },
  },
  Compare = {
    { 1, "result", "enum" },
    { 2, "target", "enum" },
    { 3, "key", "bytes" },
    { 4, "version", "int64", oneof = "target_union" },
    { 5, "create_revision", "int64", oneof = "target_union" },
    { 6, "mod_revision", "int64", oneof = "target_union" },
    { 7, "value", "bytes", oneof = "target_union" },
    { 8, "lease", "int64", oneof = "target_union" },
    { 64, "range_end", "bytes" },
  },
  TxnRequest = {
    { 1, "compare", "Compare", "repeated" },
    { 2, "success", "RequestOp", "repeated" },
    { 3, "failure", "RequestOp", "repeated" },
  },
  TxnResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "succeeded", "bool" },
    { 3, "responses", "ResponseOp", "repeated" },
  },
  CompactionRequest = {
    { 1, "revision", "int64" },
    { 2, "physical", "bool" },
  },
  CompactionResponse = {
    { 1, "header", "ResponseHeader" },
  },
  HashRequest = {
  },
  HashKVRequest = {
    { 1, "revision", "int64" },
  },
  HashKVResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "hash", "uint32" },
    { 3, "compact_revision", "int64" },
    { 4, "hash_revision", "int64" },
  },
  HashResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "hash", "uint32" },
  },
  SnapshotRequest = {
  },
  SnapshotResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "remaining_bytes", "uint64" },
    { 3, "blob", "bytes" },
    { 4, "version", "string" },
  },
  WatchRequest = {
    { 1, "create_request", "WatchCreateRequest", oneof = "request_union" },
    { 2, "cancel_request", "WatchCancelRequest", oneof = "request_union" },
    { 3, "progress_request", "WatchProgressRequest", oneof = "request_union" },
  },
  WatchCreateRequest = {
    { 1, "key", "bytes" },
    { 2, "range_end", "bytes" },
    { 3, "start_revision", "int64" },
    { 4, "progress_notify", "bool" },
    { 5, "filters", "enum", "repeated" },
    { 6, "prev_kv", "bool" },
    { 7, "watch_id", "int64" },
    { 8, "fragment", "bool" },
  },
  WatchCancelRequest = {
    { 1, "watch_id", "int64" },
  },
  WatchProgressRequest = {
  },
  WatchResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "watch_id", "int64" },
    { 3, "created", "bool" },
    { 4, "canceled", "bool" },
    { 5, "compact_revision", "int64" },
    { 6, "cancel_reason", "string" },
    { 7, "fragment", "bool" },
    { 11, "events", "Event", "repeated" },
  },
  LeaseGrantRequest = {
    { 1, "TTL", "int64" },
    { 2, "ID", "int64" },
  },
  LeaseGrantResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "ID", "int64" },
    { 3, "TTL", "int64" },
    { 4, "error", "string" },
  },
  LeaseRevokeRequest = {
    { 1, "ID", "int64" },
  },
  LeaseRevokeResponse = {
    { 1, "header", "ResponseHeader" },
  },
  LeaseCheckpoint = {
    { 1, "ID", "int64" },
    { 2, "remaining_TTL", "int64" },
  },
  LeaseCheckpointRequest = {
    { 1, "checkpoints", "LeaseCheckpoint", "repeated" },
  },
  LeaseCheckpointResponse = {
    { 1, "header", "ResponseHeader" },
  },
  LeaseKeepAliveRequest = {
    { 1, "ID", "int64" },
  },
  LeaseKeepAliveResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "ID", "int64" },
    { 3, "TTL", "int64" },
  },
  LeaseTimeToLiveRequest = {
    { 1, "ID", "int64" },
    { 2, "keys", "bool" },
  },
  LeaseTimeToLiveResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "ID", "int64" },
    { 3, "TTL", "int64" },
    { 4, "grantedTTL", "int64" },
    { 5, "keys", "bytes", "repeated" },
  },
  LeaseLeasesRequest = {
  },
  LeaseStatus = {
    { 1, "ID", "int64" },
  },
  LeaseLeasesResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "leases", "LeaseStatus", "repeated" },
  },
  Member = {
    { 1, "ID", "uint64" },
    { 2, "name", "string" },
    { 3, "peerURLs", "string", "repeated" },
    { 4, "clientURLs", "string", "repeated" },
    { 5, "isLearner", "bool" },
  },
  MemberAddRequest = {
    { 1, "peerURLs", "string", "repeated" },
    { 2, "isLearner", "bool" },
  },
  MemberAddResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "member", "Member" },
    { 3, "members", "Member", "repeated" },
  },
  MemberRemoveRequest = {
    { 1, "ID", "uint64" },
  },
  MemberRemoveResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "members", "Member", "repeated" },
  },
  MemberUpdateRequest = {
    { 1, "ID", "uint64" },
    { 2, "peerURLs", "string", "repeated" },
  },
  MemberUpdateResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "members", "Member", "repeated" },
  },
  MemberListRequest = {
    { 1, "linearizable", "bool" },
  },
  MemberListResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "members", "Member", "repeated" },
  },
  MemberPromoteRequest = {
    { 1, "ID", "uint64" },
  },
  MemberPromoteResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "members", "Member", "repeated" },
  },
  DefragmentRequest = {
  },
  DefragmentResponse = {
    { 1, "header", "ResponseHeader" },
  },
  MoveLeaderRequest = {
    { 1, "targetID", "uint64" },
  },
  MoveLeaderResponse = {
    { 1, "header", "ResponseHeader" },
  },
  AlarmRequest = {
    { 1, "action", "enum" },
    { 2, "memberID", "uint64" },
    { 3, "alarm", "enum" },
  },
  AlarmMember = {
    { 1, "memberID", "uint64" },
    { 2, "alarm", "enum" },
  },
  AlarmResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "alarms", "AlarmMember", "repeated" },
  },
  DowngradeRequest = {
    { 1, "action", "enum" },
    { 2, "version", "string" },
  },
  DowngradeResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "version", "string" },
  },
  DowngradeVersionTestRequest = {
    { 1, "ver", "string" },
  },
  StatusRequest = {
  },
  StatusResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "version", "string" },
    { 3, "dbSize", "int64" },
    { 4, "leader", "uint64" },
    { 5, "raftIndex", "uint64" },
    { 6, "raftTerm", "uint64" },
    { 7, "raftAppliedIndex", "uint64" },
    { 8, "errors", "string", "repeated" },
    { 9, "dbSizeInUse", "int64" },
    { 10, "isLearner", "bool" },
    { 11, "storageVersion", "string" },
    { 12, "dbSizeQuota", "int64" },
    { 13, "downgradeInfo", "DowngradeInfo" },
  },
  DowngradeInfo = {
    { 1, "enabled", "bool" },
    { 2, "targetVersion", "string" },
  },
  AuthEnableRequest = {
  },
  AuthDisableRequest = {
  },
  AuthStatusRequest = {
  },
  AuthenticateRequest = {
    { 1, "name", "string" },
    { 2, "password", "string" },
  },
  AuthUserAddRequest = {
    { 1, "name", "string" },
    { 2, "password", "string" },
    { 3, "options", "UserAddOptions" },
    { 4, "hashedPassword", "string" },
  },
  AuthUserGetRequest = {
    { 1, "name", "string" },
  },
  AuthUserDeleteRequest = {
    { 1, "name", "string" },
  },
  AuthUserChangePasswordRequest = {
    { 1, "name", "string" },
    { 2, "password", "string" },
    { 3, "hashedPassword", "string" },
  },
  AuthUserGrantRoleRequest = {
    { 1, "user", "string" },
    { 2, "role", "string" },
  },
  AuthUserRevokeRoleRequest = {
    { 1, "name", "string" },
    { 2, "role", "string" },
  },
  AuthRoleAddRequest = {
    { 1, "name", "string" },
  },
  AuthRoleGetRequest = {
    { 1, "role", "string" },
  },
  AuthUserListRequest = {
  },
  AuthRoleListRequest = {
  },
  AuthRoleDeleteRequest = {
    { 1, "role", "string" },
  },
  AuthRoleGrantPermissionRequest = {
    { 1, "name", "string" },
    { 2, "perm", "Permission" },
  },
  AuthRoleRevokePermissionRequest = {
    { 1, "role", "string" },
    { 2, "key", "bytes" },
    { 3, "range_end", "bytes" },
  },
  AuthEnableResponse = {
    { 1, "header", "ResponseHeader" },
  },
  AuthDisableResponse = {
    { 1, "header", "ResponseHeader" },
  },
  AuthStatusResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "enabled", "bool" },
    { 3, "authRevision", "uint64" },
  },
  AuthenticateResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "token", "string" },
  },
  AuthUserAddResponse = {
    { 1, "header", "ResponseHeader" },
  },
  AuthUserGetResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "roles", "string", "repeated" },
  },
  AuthUserDeleteResponse = {
    { 1, "header", "ResponseHeader" },
  },
  AuthUserChangePasswordResponse = {
    { 1, "header", "ResponseHeader" },
  },
  AuthUserGrantRoleResponse = {
    { 1, "header", "ResponseHeader" },
  },
  AuthUserRevokeRoleResponse = {
    { 1, "header", "ResponseHeader" },
  },
  AuthRoleAddResponse = {
    { 1, "header", "ResponseHeader" },
  },
  AuthRoleGetResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "perm", "Permission", "repeated" },
  },
  AuthRoleListResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "roles", "string", "repeated" },
  },
  AuthUserListResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "users", "string", "repeated" },
  },
  AuthRoleDeleteResponse = {
    { 1, "header", "ResponseHeader" },
  },
  AuthRoleGrantPermissionResponse = {
    { 1, "header", "ResponseHeader" },
  },
  AuthRoleRevokePermissionResponse = {
    { 1, "header", "ResponseHeader" },
  },
  RangeStreamResponse = {
    { 1, "range_response", "RangeResponse" },
  },
  LockRequest = {
    { 1, "name", "bytes" },
    { 2, "lease", "int64" },
  },
  LockResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "key", "bytes" },
  },
  UnlockRequest = {
    { 1, "key", "bytes" },
  },
  UnlockResponse = {
    { 1, "header", "ResponseHeader" },
  },
  CampaignRequest = {
    { 1, "name", "bytes" },
    { 2, "lease", "int64" },
    { 3, "value", "bytes" },
  },
  CampaignResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "leader", "LeaderKey" },
  },
  LeaderKey = {
    { 1, "name", "bytes" },
    { 2, "key", "bytes" },
    { 3, "rev", "int64" },
    { 4, "lease", "int64" },
  },
  LeaderRequest = {
    { 1, "name", "bytes" },
  },
  LeaderResponse = {
    { 1, "header", "ResponseHeader" },
    { 2, "kv", "KeyValue" },
  },
  ResignRequest = {
    { 1, "leader", "LeaderKey" },
  },
  ResignResponse = {
    { 1, "header", "ResponseHeader" },
  },
  ProclaimRequest = {
    { 1, "leader", "LeaderKey" },
    { 2, "value", "bytes" },
  },
  ProclaimResponse = {
    { 1, "header", "ResponseHeader" },
  },
}

-- The enums, by "Message.Enum" (or "Enum" at the top level): name -> number.
M.enums = {
  ["Event.EventType"] = { PUT = 0, DELETE = 1 },
  ["Permission.Type"] = { READ = 0, WRITE = 1, READWRITE = 2 },
  ["RangeRequest.SortOrder"] = { NONE = 0, ASCEND = 1, DESCEND = 2 },
  ["RangeRequest.SortTarget"] = { KEY = 0, VERSION = 1, CREATE = 2, MOD = 3, VALUE = 4 },
  ["Compare.CompareResult"] = { EQUAL = 0, GREATER = 1, LESS = 2, NOT_EQUAL = 3 },
  ["Compare.CompareTarget"] = { VERSION = 0, CREATE = 1, MOD = 2, VALUE = 3, LEASE = 4 },
  ["WatchCreateRequest.FilterType"] = { NOPUT = 0, NODELETE = 1 },
  ["AlarmType"] = { NONE = 0, NOSPACE = 1, CORRUPT = 2 },
  ["AlarmRequest.AlarmAction"] = { GET = 0, ACTIVATE = 1, DEACTIVATE = 2 },
  ["DowngradeRequest.DowngradeAction"] = { VALIDATE = 0, ENABLE = 1, CANCEL = 2 },
}

M.types = core.pb_compile(M.messages)

return M
