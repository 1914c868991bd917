-- examples/plain.lua: a plain script, no coroutines. Called outside a coroutine, every coord
-- call simply waits for its reply, so scripts and tools can use the clients directly.
local coord = require "coord"

local etcd = coord.etcd.new()     -- ETCDCTL_ENDPOINTS, or http://127.0.0.1:2379
local consul = coord.consul.new() -- CONSUL_HTTP_ADDR, or 127.0.0.1:8500

assert(etcd:put("plain/greeting", "hello from etcd"))
local kv = assert(etcd:get("plain/greeting"))
print(("etcd:   %s = %q (version %d, revision %d)"):format(kv.key, kv.value, kv.version, kv.mod_revision))
-- value, err, header: an absent key is nil with no error; the header comes third
local missing, gerr, header = etcd:get("plain/missing")
assert(not gerr, tostring(gerr))
print("etcd:   a missing key reads as", missing)
print(("etcd:   read at revision %d"):format(header.revision))

assert(consul.kv:put("plain/greeting", "hello from consul"))
local entry, _, meta = assert(consul.kv:get("plain/greeting"))
print(("consul: %s = %q (modify index %d, index %d)"):format(entry.key, entry.value, entry.modify_index, meta.index))
print("consul: a missing key reads as", (consul.kv:get("plain/missing")))

-- failures are values, not exceptions
local res, err = coord.etcd.new { endpoints = { "http://127.0.0.1:1" }, timeout = 1 }:get("x")
print("a server that is not there:", res, err.kind)
