-- spec/your_script.lua: the `your_script.lua` of README's "Running your own script", as
-- spec/install_spec.lua and .ci/rock run it. It loads every module of the checkout's lua/coord/
-- and checks that each one, and coord.core, was found under COORD_EXPECT_FROM (the checkout or
-- the rock tree), then makes one request through the C core.
local from = assert(os.getenv("COORD_EXPECT_FROM"), "COORD_EXPECT_FROM is not set")
local top = (debug.getinfo(1, "S").source:match("^@(.*)/spec/[^/]*$")) or "."

local function under(path, what)
  assert(path, what .. " is not found at all")
  assert(path:sub(1, #from + 1) == from .. "/", what .. " comes from " .. path .. ", not from " .. from)
  return path
end

local list = assert(io.popen("cd '" .. top .. "/lua' && find coord -name '*.lua' | sort"))
local count = 0
for file in list:lines() do
  local name = file:gsub("%.lua$", ""):gsub("/init$", ""):gsub("/", ".")
  under(package.searchpath(name, package.path), "module " .. name)
  require(name)
  count = count + 1
end
assert(list:close())
assert(count > 0, "no module found in " .. top .. "/lua")

local coord = require "coord"
local core = under(package.searchpath("coord.core", package.cpath), "coord.core")
local _, err = coord.http.get("http://127.0.0.1:1/")
assert(err and err.kind == "connect", "a request to a closed port gave " .. tostring(err))
print(("your_script ok: %s, %d modules, coord.core from %s"):format(coord._VERSION, count, core))
