/* core.c: luaopen_coord_core: checks what libcurl offers and registers the engine. */
#include <stdio.h>
#include "codec.h"
#include "file.h"
#include "headers.h"
#include "json.h"
#include "request.h"

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
  lua_newtable(L);
  coord_loop_register(L);
  coord_codec_register(L);
  coord_json_register(L);
  coord_file_register(L);
  coord_headers_register(L);
  lua_pushfstring(L, "libcurl/%s libuv/%s", info->version, uv_version_string());
  lua_setfield(L, -2, "versions");
  lua_pushboolean(L, (info->features & CURL_VERSION_HTTP2) != 0);
  lua_setfield(L, -2, "http2");
  return 1;
}
