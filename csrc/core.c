/* core.c: luaopen_coord_core: checks what libcurl offers and registers the engine. */
#include <ares.h>
#include <stdio.h>
#include "codec.h"
#include "file.h"
#include "headers.h"
#include "json.h"
#include "pick.h"
#include "pb.h"
#include "request.h"
#include "sha256.h"
#include "srv.h"

static int global_ready;

/* versions = { libcurl = "7.88.1", libuv = "1.44.2", ssl = "OpenSSL/3.0.11" (absent without
   TLS), http2 = true/false }: what the libraries loaded at run time report. */
static void push_versions(lua_State *L, const curl_version_info_data *info) {
  lua_createtable(L, 0, 6);
  lua_pushstring(L, info->version);
  lua_setfield(L, -2, "libcurl");
  lua_pushstring(L, uv_version_string());
  lua_setfield(L, -2, "libuv");
  if (info->ssl_version) {
    lua_pushstring(L, info->ssl_version);
    lua_setfield(L, -2, "ssl");
  }
  lua_pushstring(L, ares_version(NULL));
  lua_setfield(L, -2, "cares");
  lua_pushboolean(L, (info->features & CURL_VERSION_HTTP2) != 0);
  lua_setfield(L, -2, "http2");
}

COORD_EXPORT int luaopen_coord_core(lua_State *L) {
  if (!global_ready) {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return luaL_error(L, "coord: curl_global_init failed");
    global_ready = 1;
  }
  curl_version_info_data *info = curl_version_info(CURLVERSION_NOW);
  if (info == NULL) return luaL_error(L, "coord: curl_version_info failed");
  if (!(info->features & CURL_VERSION_ASYNCHDNS))
    return luaL_error(L, "coord: libcurl %s resolves names synchronously; it would block the loop", info->version);
  coord_req_register(L);
  coord_srv_register(L);
  lua_newtable(L);
  coord_loop_register(L);
  coord_codec_register(L);
  coord_json_register(L);
  coord_pick_register(L);
  coord_pb_register(L);
  coord_file_register(L);
  coord_sha256_register(L);
  coord_headers_register(L);
  push_versions(L, info);
  lua_setfield(L, -2, "versions");
  return 1;
}
