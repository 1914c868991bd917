-- coord.url: every value coord places in a URL goes through here, escaped as what it is: a
-- query value, a path that keeps its "/", or one path segment that cannot add segments.

local M = {}

local function escape_byte(c)
  return ("%%%02X"):format(c:byte())
end

-- Most values need no escaping: a find is much cheaper than a gsub that builds a new
-- string, so the gsub only runs when there is something to escape.

--- Percent-encodes s for a query value (or a path segment): everything but A-Z a-z 0-9 - . _ ~.
function M.query(s)
  if not s:find("[^%w%-%._~]") then return s end
  return (s:gsub("[^%w%-%._~]", escape_byte))
end

--- Percent-encodes s for a URL path, keeping "/" (a KV key keeps its hierarchy).
function M.path(s)
  if not s:find("[^%w%-%._~/]") then return s end
  return (s:gsub("[^%w%-%._~/]", escape_byte))
end

local function bad(i, fname, what, v)
  local shown = #v > 40 and v:sub(1, 40) .. "..." or v
  error(("bad argument #%d to '%s' (%s expected, got %q)"):format(i, fname, what, shown), 3)
end

--- One path segment: s escaped so that it cannot add segments, a query or a fragment. An
--- empty, "." or ".." segment cannot be addressed (libcurl and the servers' routers squash
--- dot segments): it raises an argument error naming argument i of fname.
function M.segment(s, i, fname)
  if type(s) ~= "string" then
    error(("bad argument #%d to '%s' (string expected, got %s)"):format(i, fname, type(s)), 3)
  end
  if s == "" or s == "." or s == ".." then bad(i, fname, "a name (not empty, '.' or '..')", s) end
  return M.query(s)
end

--- Checks that s is a UUID (Consul session IDs and other IDs Consul makes); returns it.
function M.uuid(s, i, fname)
  if type(s) ~= "string" then
    error(("bad argument #%d to '%s' (string expected, got %s)"):format(i, fname, type(s)), 3)
  end
  if #s ~= 36 or not s:find("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$") then
    bad(i, fname, "UUID", s)
  end
  return s
end

return M
