# rockspec/rock.mk: how `luarocks make` builds coord.core. It links in one step into build/rock/,
# so the checkout's own module (coord/core.so from `make build`, which the specs load) is never
# replaced and no object file lands in the tree. luarocks passes the variables below.
SRCS := $(wildcard csrc/*.c)
HDRS := $(wildcard csrc/*.h)
OUT  := build/rock/coord/core.so

$(OUT): $(SRCS) $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -std=gnu11 -Wall -Wextra -fvisibility=hidden -I$(LUA_INCDIR) -I$(LIBUV_INCDIR) -I$(CARES_INCDIR) \
	  $(LIBFLAG) -o $@ $(SRCS) -L$(LIBUV_LIBDIR) -L$(LIBCURL_LIBDIR) -L$(CARES_LIBDIR) -luv -lcurl -lcares
