-- coord.errors: the error values that coord functions return as their second result.
--
-- An error is a table with at least `kind` and `message`, plus `status` when an HTTP status
-- is known. tostring() gives one readable line. Clients add their own kinds and fields.

local M = {}

local Error = { __name = "coord.error" }
Error.__index = Error

function Error.__tostring(e)
  local head = e.kind
  if e.status then head = head .. " " .. e.status end
  local s = head .. ": " .. tostring(e.message)
  if e.method and e.url then s = s .. " (" .. e.method .. " " .. e.url .. ")" end
  return s
end

--- Makes an error value. fields (optional) are copied into it.
function M.new(kind, message, fields)
  local e = { kind = kind, message = message }
  if fields then
    for k, v in pairs(fields) do e[k] = v end
  end
  return setmetatable(e, Error)
end

--- True when v is an error made by coord.
function M.is(v)
  return getmetatable(v) == Error
end

--- The portable kind of a server's HTTP error status, the same for both clients (README,
--- "Error kinds"); nil for a status without one (the caller's kind is then "http").
M.by_status = { [400] = "invalid", [401] = "auth", [403] = "permission", [404] = "not_found",
  [409] = "conflict", [413] = "invalid", [429] = "exhausted", [503] = "unavailable" }

-- A metatable for result records (an etcd header, a Consul meta): tostring() gives
-- "name{field=value, ...}" with the fields in name order.
local function record_tostring(r)
  local names = {}
  for k in pairs(r) do
    if type(k) == "string" then names[#names + 1] = k end
  end
  table.sort(names)
  for i, k in ipairs(names) do
    local v = r[k]
    names[i] = k .. "=" .. (type(v) == "string" and ("%q"):format(v) or tostring(v))
  end
  return getmetatable(r).__name .. "{" .. table.concat(names, ", ") .. "}"
end

--- A metatable named name whose tostring() lists a record's fields, for the metadata
--- tables coord returns third.
function M.record(name)
  return { __name = name, __tostring = record_tostring }
end

M.Error = Error
return M
