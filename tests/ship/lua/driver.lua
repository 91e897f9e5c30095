-- Runs an Argo CD health.lua against test objects, the way Argo CD does: the script is a chunk,
-- the object is the global `obj`, the chunk returns a table {status, message}.
-- Only what Argo CD's Lua VM opens for a custom (argocd-cm) health check is visible: base and table
-- (util/lua/lua.go: package, base, table and a safe os, with SkipOpenLibs; no string, math or io).
--
-- Usage: lua5.1 driver.lua HEALTH_LUA CASES_LUA
-- CASES_LUA is a chunk returning a list of objects (Lua table literals).
-- Output: for each object, status NUL message NUL (or ERROR NUL text NUL).

local health_path, cases_path = arg[1], arg[2]
local check = assert(loadfile(health_path))
local cases = assert(loadfile(cases_path))()

local function sandbox(o)
  return {
    obj = o,
    assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs, pcall = pcall,
    select = select, tonumber = tonumber, tostring = tostring, type = type, unpack = unpack,
    table = table,
  }
end

for _, o in ipairs(cases) do
  setfenv(check, sandbox(o))
  local ok, hs = pcall(check)
  if not ok then
    io.write("ERROR", "\0", tostring(hs), "\0")
  elseif type(hs) ~= "table" then
    io.write("ERROR", "\0", "health.lua returned " .. type(hs) .. ", not a table", "\0")
  else
    io.write(tostring(hs.status), "\0", tostring(hs.message), "\0")
  end
end
