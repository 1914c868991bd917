rockspec_format = "3.0"
package = "coord"
version = "scm-1"
source = {
   url = "git+file:///dev/null", -- built in place with `luarocks make`
}
description = {
   summary = "Non-blocking Consul and etcd clients for Lua 5.4 on libuv and libcurl",
   detailed = [[
coord gives Lua programs coroutine-based, non-blocking access to Consul and etcd.
A C core runs HTTP on libuv with libcurl's multi interface; every call yields the
running coroutine and resumes it when the reply arrives.
]],
   license = "MIT",
   labels = { "consul", "etcd", "libuv", "libcurl", "async" },
}
dependencies = {
   "lua >= 5.4, < 5.5",
}
external_dependencies = {
   LIBUV = { header = "uv.h", library = "uv" },
   -- no header check: Debian keeps curl/curl.h under the multiarch include dir, which the
   -- compiler searches but luarocks does not
   LIBCURL = { library = "curl" },
   CARES = { header = "ares.h", library = "cares" },
}
build = {
   -- rockspec/rock.mk builds coord.core into build/rock/: the builtin backend would write
   -- csrc/*.o and replace coord/core.so, the module `make build` made for the specs
   type = "make",
   makefile = "rockspec/rock.mk",
   build_variables = {
      CFLAGS = "$(CFLAGS)",
      LIBFLAG = "$(LIBFLAG)",
      LUA_INCDIR = "$(LUA_INCDIR)",
      LIBUV_INCDIR = "$(LIBUV_INCDIR)",
      LIBUV_LIBDIR = "$(LIBUV_LIBDIR)",
      LIBCURL_LIBDIR = "$(LIBCURL_LIBDIR)",
      CARES_INCDIR = "$(CARES_INCDIR)",
      CARES_LIBDIR = "$(CARES_LIBDIR)",
   },
   install_pass = false,
   install = {
      lib = { ["coord.core"] = "build/rock/coord/core.so" },
      lua = {
         ["coord"] = "lua/coord/init.lua",
         ["coord.errors"] = "lua/coord/errors.lua",
         ["coord.url"] = "lua/coord/url.lua",
         ["coord.args"] = "lua/coord/args.lua",
         ["coord.hold"] = "lua/coord/hold.lua",
         ["coord.sched"] = "lua/coord/sched.lua",
         ["coord.sync"] = "lua/coord/sync.lua",
         ["coord.http"] = "lua/coord/http.lua",
         ["coord.pipeline"] = "lua/coord/pipeline.lua",
         ["coord.grpc"] = "lua/coord/grpc.lua",
         ["coord.etcd"] = "lua/coord/etcd.lua",
         ["coord.etcd.proto"] = "lua/coord/etcd/proto.lua",
         ["coord.etcd.pb_schema"] = "lua/coord/etcd/pb_schema.lua",
         ["coord.etcd.grpc"] = "lua/coord/etcd/grpc.lua",
         ["coord.etcd.grpc_codes"] = "lua/coord/etcd/grpc_codes.lua",
         ["coord.mirror"] = "lua/coord/mirror.lua",
         ["coord.consul"] = "lua/coord/consul.lua",
         ["coord.consul.kv"] = "lua/coord/consul/kv.lua",
         ["coord.consul.watch"] = "lua/coord/consul/watch.lua",
         ["coord.consul.txn"] = "lua/coord/consul/txn.lua",
         ["coord.consul.agent"] = "lua/coord/consul/agent.lua",
         ["coord.consul.health"] = "lua/coord/consul/health.lua",
         ["coord.consul.catalog"] = "lua/coord/consul/catalog.lua",
         ["coord.consul.status"] = "lua/coord/consul/status.lua",
         ["coord.consul.event"] = "lua/coord/consul/event.lua",
         ["coord.etcd.watch"] = "lua/coord/etcd/watch.lua",
         ["coord.etcd.watch_hub"] = "lua/coord/etcd/watch_hub.lua",
         ["coord.etcd.cluster"] = "lua/coord/etcd/cluster.lua",
         ["coord.etcd.election"] = "lua/coord/etcd/election.lua",
         ["coord.etcd.lease"] = "lua/coord/etcd/lease.lua",
         ["coord.etcd.lock"] = "lua/coord/etcd/lock.lua",
         ["coord.etcd.txn"] = "lua/coord/etcd/txn.lua",
         ["coord.dns"] = "lua/coord/dns.lua",
         ["coord.etcd.discovery"] = "lua/coord/etcd/discovery.lua",
         ["coord.etcd.recipes"] = "lua/coord/etcd/recipes.lua",
         ["coord.etcd.maintenance"] = "lua/coord/etcd/maintenance.lua",
         ["coord.etcd.auth"] = "lua/coord/etcd/auth.lua",
         ["coord.consul.coordinate"] = "lua/coord/consul/coordinate.lua",
         ["coord.consul.acl"] = "lua/coord/consul/acl.lua",
         ["coord.consul.operator"] = "lua/coord/consul/operator.lua",
         ["coord.consul.discovery"] = "lua/coord/consul/discovery.lua",
         ["coord.consul.query"] = "lua/coord/consul/query.lua",
         ["coord.consul.event_watch"] = "lua/coord/consul/event_watch.lua",
         ["coord.consul.session"] = "lua/coord/consul/session.lua",
         ["coord.consul.lock"] = "lua/coord/consul/lock.lua",
         ["coord.consul.semaphore"] = "lua/coord/consul/semaphore.lua",
      },
   },
}
