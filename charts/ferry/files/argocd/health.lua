-- Argo CD health check for Ferry's kinds (ferry.dev/v1alpha1 DataAccessTask, TopicSync, ObsDumpTask,
-- ObsRestoreTask).
--
-- Install it as resource.customizations.health.ferry.dev_<Kind> in argocd-cm (see docs/argocd.md).
-- Lua 5.1 as Argo CD runs it (gopher-lua): custom health checks get the base library only (no string or
-- math tables, no string methods) unless useOpenLibs is set, so this script uses nothing else.
--
--   status.state Running, Ready=True, generation observed -> Healthy
--   status.state Succeeded (a one-shot task, done)       -> Healthy
--   status.state Paused                                   -> Suspended
--   status.state Failed                                   -> Degraded
--   anything else, or a spec the operator has not seen   -> Progressing

local hs = {}

-- A non-empty string, or nil: numbers become text, anything else (tables, booleans) is ignored.
local function text(value)
  if type(value) == "string" and value ~= "" then
    return value
  end
  if type(value) == "number" then
    return tostring(value)
  end
  return nil
end

-- A number from a JSON number (int or float) or a numeric string, else nil.
local function number(value)
  if type(value) == "number" or type(value) == "string" then
    return tonumber(value)
  end
  return nil
end

-- "Reason: message", or whichever of the two is there, or nil.
local function summary(reason, message)
  if reason ~= nil and message ~= nil then
    return reason .. ": " .. message
  end
  if message ~= nil then
    return message
  end
  return reason
end

local metadata = {}
local status = {}
if type(obj) == "table" then
  if type(obj.metadata) == "table" then
    metadata = obj.metadata
  end
  if type(obj.status) == "table" then
    status = obj.status
  end
end

local state = text(status.state)
local detail = summary(text(status.reason), text(status.message))
local generation = number(metadata.generation)
local observed = number(status.observedGeneration)

local ready = nil
if type(status.conditions) == "table" then
  for _, condition in ipairs(status.conditions) do
    if ready == nil and type(condition) == "table" and condition.type == "Ready" then
      ready = condition
    end
  end
end

if generation ~= nil and observed ~= generation then
  -- The status describes an older spec (or none yet): whatever it says is not about this one.
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. tostring(generation)
  if observed ~= nil then
    hs.message = hs.message .. " (status is for generation " .. tostring(observed) .. ")"
  end
elseif state == "Running" then
  if ready ~= nil and ready.status == "True" then
    hs.status = "Healthy"
    hs.message = detail or "running"
  else
    hs.status = "Progressing"
    if ready == nil then
      hs.message = "waiting for the Ready condition"
    else
      hs.message = "Ready is " .. (text(ready.status) or "not set")
    end
    local why = detail
    if why == nil and ready ~= nil then
      why = summary(text(ready.reason), text(ready.message))
    end
    if why ~= nil then
      hs.message = hs.message .. ": " .. why
    end
  end
elseif state == "Succeeded" then
  hs.status = "Healthy"
  hs.message = detail or "succeeded"
elseif state == "Paused" then
  hs.status = "Suspended"
  hs.message = detail or "paused"
elseif state == "Failed" then
  hs.status = "Degraded"
  hs.message = detail or "failed"
elseif state == "Unassigned" then
  hs.status = "Progressing"
  hs.message = detail or "waiting for a worker"
elseif state == "Terminating" then
  hs.status = "Progressing"
  hs.message = detail or "terminating: workers are flushing"
elseif state == nil then
  hs.status = "Progressing"
  hs.message = detail or "waiting for the operator"
else
  hs.status = "Progressing"
  hs.message = "unknown state " .. state
  if detail ~= nil then
    hs.message = hs.message .. ": " .. detail
  end
end

return hs
