/* hdrlist.h: a request's header list (CURLOPT_HTTPHEADER) from its headers table (hdrlist.c). */
#ifndef COORD_HDRLIST_H
#define COORD_HDRLIST_H

#include <curl/curl.h>
#include "compat.h"

void coord_header_add(lua_State *L, struct curl_slist **list, const char *name, size_t nn, const char *val, size_t vn);
void coord_headers_append(lua_State *L, struct curl_slist **list, int h);
int coord_hdrlist_get(lua_State *L, int h, int cache, int req, int uv, struct curl_slist **list);
void coord_hdrlist_cache(lua_State *L);

#endif
