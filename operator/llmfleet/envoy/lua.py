"""The Lua upstream filter that gives each backend the model name it serves (and
applies a routing rule's cap on ``max_tokens``).

Clients send the public model name (RoutePolicy ``spec.model``, e.g. ``chat``); each
engine answers only to its own served name (vLLM returns 404 for anything else). The
rewrite runs as an *upstream* HTTP filter of the cluster, so it applies to whichever
cluster the route picked (split, header rule, failover) and again on every retry, and
changing a RoutePolicy never needs a model server restart.

Only the value of the top-level ``"model"`` key is replaced (and, when the route sets
``x-llmfleet-max-tokens``, a larger top-level ``max_tokens`` / ``max_completion_tokens``,
or ``max_tokens`` added when neither is there); every other byte of the body is
forwarded untouched (a parse-and-reserialise would turn integers into floats).
The scanner jumps between structural characters with ``string.find``, so even an
8 MiB prompt costs a few string searches, not a byte-by-byte loop in Lua.
"""

from __future__ import annotations

import json
import re

_TEMPLATE = r"""-- llmfleet: set the request body's top-level "model" to the served name, and say
-- which backend (ModelDeployment) the request is for.
local SERVED = {served}
local BACKEND = {backend}

-- Index of the quote closing the JSON string that opens at i.
local function string_end(s, i)
  local j = i + 1
  while true do
    local k = string.find(s, '["\\]', j)
    if k == nil then return nil end
    if string.byte(s, k) == 92 then j = k + 2 else return k end
  end
end

-- First and last index of the value of top-level key KEY (a quoted JSON string), or nil.
local function value_span(s, key)
  local depth, i = 0, 1
  while true do
    local p = string.find(s, '[{}%[%]"]', i)
    if p == nil then return nil end
    local c = string.byte(s, p)
    if c == 34 then
      local e = string_end(s, p)
      if e == nil then return nil end
      if depth == 1 and e - p + 1 == #key and string.sub(s, p, e) == key then
        local _, colon = string.find(s, '^%s*:%s*', e + 1)
        if colon ~= nil then
          local vs = colon + 1
          if string.byte(s, vs) == 34 then
            local ve = string_end(s, vs)
            if ve == nil then return nil end
            return vs, ve
          end
          local ve = string.find(s, '[%s,}]', vs)
          if ve == nil then return nil end
          return vs, ve - 1
        end
      end
      i = e + 1
    elseif c == 123 or c == 91 then
      depth = depth + 1
      i = p + 1
    else
      depth = depth - 1
      i = p + 1
    end
  end
end

-- S with max_tokens and max_completion_tokens at most CAP (a request with neither gets
-- max_tokens CAP).
local function capped(s, cap)
  local found = false
  for _, key in ipairs({'"max_tokens"', '"max_completion_tokens"'}) do
    local vs, ve = value_span(s, key)
    if vs ~= nil then
      local text = string.sub(s, vs, ve)
      local v = tonumber(text)
      if v ~= nil or text == "null" then
        found = true
        if v == nil or v > cap then s = string.sub(s, 1, vs - 1) .. cap .. string.sub(s, ve + 1) end
      end
    end
  end
  if not found then
    local open = string.find(s, "{", 1, true)
    if open ~= nil then s = string.sub(s, 1, open) .. '"max_tokens":' .. cap .. "," .. string.sub(s, open + 1) end
  end
  return s
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local served = SERVED
  if served == nil then
    -- A fallback chain: the endpoint's own metadata (copied into headers) names it.
    served = headers:get("x-llmfleet-served-json")
    headers:remove("x-llmfleet-served-json")
  else
    headers:replace("x-llmfleet-backend", BACKEND)
  end
  local cap = tonumber(headers:get("x-llmfleet-max-tokens") or "")
  headers:remove("x-llmfleet-max-tokens")
  local body = handle:body()
  if body == nil then return end
  local n = body:length()
  if n == 0 then return end
  local s = body:getBytes(0, n)
  local out = s
  local vs, ve = value_span(out, '"model"')
  if served ~= nil and vs ~= nil and string.sub(out, vs, ve) ~= served then
    out = string.sub(out, 1, vs - 1) .. served .. string.sub(out, ve + 1)
  end
  if cap ~= nil then out = capped(out, math.floor(cap)) end
  if out ~= s then body:setBytes(out) end
end
"""


def lua_long_string(text: str) -> str:
    """``text`` as a Lua long-bracket literal (no escapes are interpreted inside)."""
    level = 0
    while f"]{'=' * level}]" in text or text.endswith("]" + "=" * level):
        level += 1
    eq = "=" * level
    # A newline right after the opening bracket would be dropped by Lua; JSON text
    # starts with a quote, so it never begins with one.
    return f"[{eq}[{text}]{eq}]"


def model_rewrite_source(served_model: str | None, backend: str | None = "") -> str:
    """Lua source of the upstream filter that rewrites ``model`` to ``served_model`` and
    sets the ``x-llmfleet-backend`` header to ``backend`` ("<namespace>/<name>"): the
    operator's activator reads it to know which ModelDeployment to wake. With None, both
    come from the request's headers, set from the chosen endpoint's metadata (fallback
    chains, whose upstream filters serve several clusters)."""
    values = {
        "{served}": "nil" if served_model is None else lua_long_string(json.dumps(served_model, ensure_ascii=True)),
        "{backend}": "nil" if backend is None else lua_long_string(backend),
    }
    # One pass, so a name that contains a placeholder's text is never substituted again.
    return re.sub(r"\{served\}|\{backend\}", lambda m: values[m.group(0)], _TEMPLATE)
