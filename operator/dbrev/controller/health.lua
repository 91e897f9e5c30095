-- Argo CD health check for dbrev.io/DatabaseRevision (Lua 5.1 / GopherLua).
--
-- Install: argocd-cm key `resource.customizations.health.dbrev.io_DatabaseRevision`
-- (examples/argocd/argocd-cm.yaml), or copy this file to
-- resource_customizations/dbrev.io/DatabaseRevision/health.lua in Argo CD.
--
-- Reads the conditions dbrev writes (Ready, Reconciling, Stalled), in this order:
--   being deleted                                  -> Progressing
--   no status / no conditions yet                  -> Progressing
--   status.observedGeneration ~= metadata.generation -> Progressing (the status is stale)
--   Reconciling reason Suspended (spec.suspend)    -> Suspended
--   Stalled=True (a human must act)                -> Degraded
--   Ready=True                                     -> Healthy
--   Ready reason AwaitingApproval                  -> Suspended (not a failure: approve the plan)
--   anything else (Reconciling=True, retrying...)  -> Progressing
-- Degraded is only ever reported for a failure of the generation the operator observed.
--
-- Argo CD runs custom health checks without Lua's string, math and io libraries (unless
-- resource.customizations.useOpenLibs.<group>_<Kind> is set): this script uses only base Lua.

local hs = {}

local function condition(ctype)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function describe(c)
  if c == nil then
    return ""
  end
  local reason = c.reason or ""
  local message = c.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  end
  if reason ~= "" then
    return reason
  end
  return message
end

if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "deleting"
  return hs
end

if obj.status == nil or obj.status.conditions == nil or #obj.status.conditions == 0 then
  hs.status = "Progressing"
  hs.message = "waiting for dbrev to report a status"
  return hs
end

local ready = condition("Ready")
local reconciling = condition("Reconciling")
local stalled = condition("Stalled")

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local observed = obj.status.observedGeneration
if observed == nil and ready ~= nil then
  observed = ready.observedGeneration
end
if generation ~= nil and observed ~= generation then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

if reconciling ~= nil and reconciling.reason == "Suspended" then
  hs.status = "Suspended"
  hs.message = describe(reconciling)
  return hs
end

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or ""
  return hs
end

if ready ~= nil and ready.reason == "AwaitingApproval" then
  -- dbrev's message names the plan hash and the command that approves it.
  hs.status = "Suspended"
  hs.message = describe(ready)
  return hs
end

hs.status = "Progressing"
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = describe(reconciling)
elseif ready ~= nil then
  hs.message = describe(ready)
else
  hs.message = "waiting for dbrev to report a status"
end
return hs
