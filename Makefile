# coord: build, test and check the C core and the Lua modules.
# `make test` and `make demo` install what is missing on Debian 12 (see .ci/deps).

LUA      ?= lua5.4
# libcurl: the system's (7.88.1) for coord/core.so; `make build CURL=8` builds
# build/curl8/coord/core.so instead, against libcurl 8.14.1 from bookworm-backports, which
# `.ci/deps curl8` unpacks into .deps/curl-8.14 (never installed). That core.so finds its libcurl
# through its own rpath rather than LD_LIBRARY_PATH: it holds wherever the .so is loaded (busted,
# build/host, child lua5.4 processes) and nothing else (the servers, the peer, system tools) sees it.
CURL     ?=
CURL8    := $(CURDIR)/.deps/curl-8.14/usr
ARCH     := $(shell $(CC) -print-multiarch)
CURL8_H  := $(CURL8)/include/$(ARCH)/curl/curlver.h
CC       ?= gcc
WARN     := -Wall -Wextra -Werror
CFLAGS   ?= -O2 -g
SRCS     := $(wildcard csrc/*.c)
HDRS     := $(wildcard csrc/*.h)
PKG_CFLAGS = $(shell pkg-config --cflags lua5.4 libuv libcares)
PKG_LIBS   = $(shell pkg-config --libs libuv libcares)
CURL_CFLAGS = $(shell pkg-config --cflags libcurl)
CURL_LIBS   = $(shell pkg-config --libs libcurl)
BUSTED   := $(LUA) /usr/bin/busted --helper=$(CURDIR)/spec/current_test.lua
# Every spec run goes through spec/stall_guard.sh: a run whose output stops for STALL seconds
# is reported (the test, the C stacks, the sockets) and stopped, so a hang fails instead of
# holding the run.
STALL    ?= 600
GUARD     = $(CURDIR)/spec/stall_guard.sh $(STALL) env
SPEC_ENV  = LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;$(CURDIR)/spec/?.lua;;" \
            LUA_CPATH="$(CURDIR)/$(1)/?.so;;" COORD_PEER="$(CURDIR)/build/peer$(2)"
SAN      := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
ASAN_RT   = $(shell $(CC) -print-file-name=libasan.so)
VALGRIND := valgrind --quiet --error-exitcode=99 --leak-check=full --show-leak-kinds=definite,indirect \
            --errors-for-leak-kinds=definite,indirect --suppressions=$(CURDIR)/.ci/valgrind.supp

.PHONY: all deps build test test-curl8 test-grpc asan valgrind demo example bench rock soak clean

all: build

deps:
	@bash .ci/deps

ifeq ($(CURL),8)
build: build/curl8/coord/core.so
else ifeq ($(CURL),)
build: coord/core.so
else
$(error CURL=$(CURL): say CURL=8, or nothing for the system libcurl)
endif

coord/core.so: $(SRCS) $(HDRS)
	@mkdir -p coord
	$(CC) $(CFLAGS) $(WARN) -std=gnu11 -fPIC -fvisibility=hidden $(CURL_CFLAGS) $(PKG_CFLAGS) -shared -o $@ $(SRCS) $(CURL_LIBS) $(PKG_LIBS)

$(CURL8_H):
	@bash .ci/deps curl8

build/curl8/coord/core.so: CURL_CFLAGS = -I$(CURL8)/include/$(ARCH)
build/curl8/coord/core.so: CURL_LIBS = -L$(CURL8)/lib/$(ARCH) -Wl,-rpath,$(CURL8)/lib/$(ARCH) -lcurl
build/curl8/coord/core.so: $(SRCS) $(HDRS) | $(CURL8_H)
	@mkdir -p build/curl8/coord
	$(CC) $(CFLAGS) $(WARN) -std=gnu11 -fPIC -fvisibility=hidden $(CURL_CFLAGS) $(PKG_CFLAGS) -shared -o $@ $(SRCS) $(CURL_LIBS) $(PKG_LIBS)

build/asan/coord/core.so: $(SRCS) $(HDRS)
	@mkdir -p build/asan/coord
	$(CC) -O1 -g $(SAN) $(WARN) -std=gnu11 -fPIC -fvisibility=hidden $(CURL_CFLAGS) $(PKG_CFLAGS) -shared -o $@ $(SRCS) $(CURL_LIBS) $(PKG_LIBS)

build/peer: spec/peer/peer.c
	@mkdir -p build
	$(CC) -std=gnu11 -O1 -g $(WARN) -pthread -o $@ $<

# examples/host.c: a C program embedding Lua with its own epoll loop (run by spec/examples_spec.lua);
# it loads whichever coord/core.so LUA_CPATH names, so the asan run uses it too
build/host: examples/host.c
	@mkdir -p build
	$(CC) -std=gnu11 -O1 -g $(WARN) $(shell pkg-config --cflags lua5.4) -o $@ $< $(shell pkg-config --libs lua5.4) -lm

build/peer-asan: spec/peer/peer.c
	@mkdir -p build
	$(CC) -std=gnu11 -O1 -g $(SAN) $(WARN) -pthread -o $@ $<

# make test: the whole suite on the system's libcurl (7.88.1), then again on libcurl 8.14.1
# (test-curl8, without the soak and the rockspec install, which builds on the system's), then
# the etcd specs once more on 8.14.1 with their clients on transport "grpc" (test-grpc).
test: deps
	@$(MAKE) --no-print-directory build build/peer build/host
	$(GUARD) $(call SPEC_ENV,.,) $(BUSTED) --output=utfTerminal spec
	@$(MAKE) --no-print-directory test-curl8 SPEC="--exclude-pattern=soak_spec --exclude-pattern=rock_spec spec"
	@$(MAKE) --no-print-directory test-grpc

# make test-grpc: the etcd specs and the examples again on libcurl 8.14.1, their clients on
# transport "grpc" (spec/etcd_client.lua reads COORD_SPEC_ETCD_TRANSPORT; etcd_grpc_spec sets
# its own, so it is not run twice).
ETCD_SPECS := spec/etcd_spec.lua $(filter-out spec/etcd_grpc_spec.lua,$(wildcard spec/etcd_*_spec.lua)) \
              spec/mirror_spec.lua spec/mirror_snapshot_spec.lua spec/write_safety_spec.lua spec/hosts_spec.lua \
              spec/examples_spec.lua
test-grpc:
	@COORD_SPEC_ETCD_TRANSPORT=grpc $(MAKE) --no-print-directory test-curl8 SPEC="$(ETCD_SPECS)"

# make test-curl8 [SPEC=spec/http_spec.lua]: the specs (default: all) with coord built against
# libcurl 8.14.1 (CURL=8 above); spec/install_spec.lua checks that this is the libcurl loaded.
SPEC ?= spec
test-curl8: deps
	@$(MAKE) --no-print-directory build/curl8/coord/core.so build/peer build/host
	$(GUARD) $(call SPEC_ENV,build/curl8,) COORD_EXPECT_CURL=8.14.1 $(BUSTED) --output=utfTerminal $(SPEC)

asan: deps
	@$(MAKE) --no-print-directory build/asan/coord/core.so build/peer-asan build/host
	$(GUARD) $(call SPEC_ENV,build/asan,-asan) LD_PRELOAD=$(ASAN_RT) ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/.ci/lsan.supp:print_suppressions=0 UBSAN_OPTIONS=print_stacktrace=1 \
	  $(BUSTED) --output=utfTerminal spec

# The soak (spec/soak_spec.lua) is a load run whose bounds are in seconds: under memcheck's
# slowdown they cannot hold, so make valgrind runs every other spec (make asan runs the soak).
valgrind: deps
	@$(MAKE) --no-print-directory build build/peer build/host
	$(GUARD) $(call SPEC_ENV,.,) COORD_TEST_WRAPPER="$(VALGRIND)" \
	  $(VALGRIND) $(BUSTED) --output=utfTerminal --exclude-pattern=soak_spec spec

demo: deps
	@$(MAKE) --no-print-directory build
	$(call SPEC_ENV,.,) $(LUA) examples/with_servers.lua $(LUA) examples/demo.lua

# make example NAME=game_loop: one of examples/*.lua, with its own etcd and Consul
# (NAME=host: examples/host.lua under the C host, build/host)
EXAMPLE_HOST = $(if $(filter host,$(NAME)),build/host)
example: deps
	@$(MAKE) --no-print-directory build $(EXAMPLE_HOST)
	$(call SPEC_ENV,.,) $(LUA) examples/with_servers.lua $(or $(EXAMPLE_HOST),$(LUA)) examples/$(NAME).lua

bench: deps
	@bash bench/run all

# make soak [SOAK_SECONDS=600]: the soak and fault run (spec/soak/); prints its invariants and
# fails when one does not hold. spec/soak_spec.lua runs it for 120 s in `make test`.
SOAK_SECONDS ?= 600
soak: deps
	@$(MAKE) --no-print-directory build build/peer
	$(call SPEC_ENV,.,) SOAK_SECONDS=$(SOAK_SECONDS) $(LUA) spec/soak/main.lua

rock: deps
	bash .ci/rock

clean:
	rm -rf coord build luarocks-tree
