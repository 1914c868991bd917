-- spec/readme.lua: the code blocks and table rows of one section of README.md, so that specs and
-- .ci/rock check and run what the README prints rather than copies of it.
-- As a script: `lua5.4 spec/readme.lua "Section title" N` prints code block N of that section.
local M = {}

local top = (debug.getinfo(1, "S").source:match("^@(.*)/spec/[^/]*$")) or "."

-- The text of the "## title" section, up to the next "## " heading.
local function section(title)
  local f = assert(io.open(top .. "/README.md", "rb"))
  local text = f:read("a")
  f:close()
  local head = "\n## " .. title .. "\n"
  local from = text:find(head, 1, true)
  assert(from, "README.md has no section '## " .. title .. "'")
  local to = text:find("\n## ", from + #head - 1, true) or #text
  return text:sub(from + #head - 1, to)
end

--- The fenced code blocks of the section (without the fences), in order.
function M.blocks(title)
  local blocks = {}
  for body in section(title):gmatch("\n```%w*\n(.-\n)```") do blocks[#blocks + 1] = body end
  return blocks
end

--- The rows of the section's table below its header, each a list of its cells (trimmed).
function M.rows(title)
  local rows = {}
  for line in section(title):gmatch("\n(|[^\n]*)") do
    if not line:match("^|%-") then
      local cells = {}
      for cell in line:gmatch("|%s*([^|]-)%s*%f[|]") do cells[#cells + 1] = cell end
      rows[#rows + 1] = cells
    end
  end
  table.remove(rows, 1)
  return rows
end

if arg and arg[0] and arg[0]:match("readme%.lua$") and arg[1] then
  local b = M.blocks(arg[1])[tonumber(arg[2] or 1)]
  assert(b, "README.md section '" .. arg[1] .. "' has no code block " .. tostring(arg[2]))
  io.write(b)
end

return M
