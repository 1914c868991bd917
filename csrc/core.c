/* core.c: luaopen_coord_core: checks what libcurl offers and registers the engine. */
#include <ares.h>
#include <stdio.h>
#include "codec.h"
#include "dispatch.h"
#include "file.h"
#include "json.h"
#include "pb.h"
#include "request.h"
#include "sha256.h"
#include "srv.h"

static int global_ready;

COORD_EXPORT int luaopen_coord_core(lua_State *L) {
  if (!global_ready) {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return luaL_error(L, "coord: curl_global_init failed");
    global_ready = 1;
  }
  curl_version_info_data *info = curl_version_info(CURLVERSION_NOW);
  if (!(info->features & CURL_VERSION_ASYNCHDNS))
    return luaL_error(L, "coord: libcurl %s resolves names synchronously; it would block the loop", info->version);
  coord_req_register(L);
  coord_srv_register(L);
  lua_newtable(L);
  coord_loop_register(L);
  coord_codec_register(L);
  coord_json_register(L);
  coord_pb_register(L);
  coord_file_register(L);
  coord_sha256_register(L);
  coord_dispatch_register(L);
  lua_pushfstring(L, "libcurl/%s libuv/%s c-ares/%s", info->version, uv_version_string(), ares_version(NULL));
  lua_setfield(L, -2, "versions");
  lua_pushboolean(L, (info->features & CURL_VERSION_HTTP2) != 0);
  lua_setfield(L, -2, "http2");
  return 1;
}
