-- spec/current_test.lua: a busted helper (`--helper=spec/current_test.lua`) that keeps the file
-- COORD_SPEC_CURRENT names holding the full name of the test now running (and of the one before),
-- so that spec/stall_guard.sh can say which test stalled. Without that variable it does nothing.
local file = os.getenv("COORD_SPEC_CURRENT")
if not file or file == "" then return end
local busted = require "busted"

local function full_name(element)
  local names = {}
  while element and element.descriptor ~= "file" do
    if element.name then table.insert(names, 1, element.name) end
    element = busted.parent(element)
  end
  if element and element.name then table.insert(names, 1, element.name .. ":") end
  return table.concat(names, " ")
end

local last = "(none)"
busted.subscribe({ "test", "start" }, function(element)
  local name = full_name(element)
  local f = io.open(file, "w")
  if f then
    f:write("running: ", name, "\nbefore it: ", last, "\nsince: ", os.date("!%H:%M:%S"), " UTC\n")
    f:close()
  end
  last = name
  return nil, true
end)
