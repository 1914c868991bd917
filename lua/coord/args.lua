-- coord.args: argument checks shared by the clients, with one message format
-- ("bad argument #N to 'fn' (...)", "bad option 'name' to 'fn' (...)").

local M = {}

local function typename(v)
  return math.type(v) or type(v)
end

--- Checks argument #i of fname: its type() is want (or math.type() "integer"), or it is nil
--- when optional. Returns v. Raises "bad argument #i to 'fname' (want expected, got ...)",
--- blaming the caller of the function that calls this one.
function M.check(v, want, i, fname, optional)
  local t = want == "integer" and math.type(v) or type(v)
  if t == want or (optional and v == nil) then return v end
  error(("bad argument #%d to '%s' (%s expected, got %s)"):format(i, fname, want .. (optional and " or nil" or ""),
    typename(v)), 3)
end

--- An options argument: a table, or nil (then an empty table). Raises like check.
function M.opts(v, i, fname)
  if v == nil then return {} end
  if type(v) == "table" then return v end
  error(("bad argument #%d to '%s' (table or nil expected, got %s)"):format(i, fname, typename(v)), 3)
end

--- Checks opts[name] against want ("integer", "number", "string", "boolean", "table",
--- "function"); returns the value (nil when absent). Raises "bad option" otherwise.
function M.option(opts, name, want, fname)
  local v = opts[name]
  if v == nil then return nil end
  local t = want == "integer" and math.type(v) or type(v)
  if t == want then return v end
  error(("bad option '%s'%s (%s expected, got %s)"):format(name, fname and (" to '" .. fname .. "'") or "",
    want, typename(v)), 3)
end

--- Makes every public method of class (a metatable whose __index holds them, or class itself)
--- check its self, so that a dot call (`kv.get("k")`) raises "calling 'get' on bad self
--- (use ':')" instead of failing somewhere inside. The check is a tail call: argument errors
--- raised by the method still blame the method's caller.
function M.methods(class)
  local t = type(class.__index) == "table" and class.__index or class
  local names = {}
  for k, f in pairs(t) do
    if type(k) == "string" and type(f) == "function" and not k:find("^_") then names[#names + 1] = k end
  end
  for _, k in ipairs(names) do
    local f = t[k]
    local function bad()
      error(("calling '%s' on bad self (use ':')"):format(k), 3)
    end
    -- a method without ... and at most three arguments after self gets a wrapper with fixed
    -- arguments: a vararg function costs a copy of its frame on every call (the hot paths)
    local info = debug.getinfo(f, "u")
    if not info.isvararg and info.nparams <= 4 then
      t[k] = function(self, a, b, c)
        if getmetatable(self) ~= class then bad() end
        return f(self, a, b, c)
      end
    else
      t[k] = function(self, ...)
        if getmetatable(self) ~= class then bad() end
        return f(self, ...)
      end
    end
  end
  return class
end

return M
