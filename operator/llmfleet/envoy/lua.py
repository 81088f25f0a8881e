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

# Request headers between the routes and this filter (their one home).
BACKEND_HEADER = "x-llmfleet-backend"  # the ModelDeployment an upstream request is for (the activator reads it)
SERVED_HEADER = "x-llmfleet-served-json"  # a fallback chain's endpoint's served name (from EDS metadata)
MAX_TOKENS_HEADER = "x-llmfleet-max-tokens"  # a routing rule's cap on max_tokens
SATURATED_HEADER = "x-llmfleet-saturated"  # a saturation gate's answer: the backend is full, try the fallback
PREFIX_HEADER = "x-llmfleet-prefix"  # prefix affinity: a hash of the request's leading content, what Envoy hashes on

_SCANNER = r"""-- Index of the quote closing the JSON string that opens at i.
local function string_end(s, i)
  local j = i + 1
  while true do
    local k = string.find(s, '["\\]', j)
    if k == nil then return nil end
    if string.byte(s, k) == 92 then j = k + 2 else return k end
  end
end

-- First and last index of the value of top-level key KEY (a quoted JSON string), or nil.
-- (An object or array value is spanned by bracket matching: fine for what llmfleet
-- reads this way, which holds no brackets inside strings.)
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
          local b = string.byte(s, vs)
          if b == 123 or b == 91 then
            local _, ve = string.find(s, b == 123 and '^%b{}' or '^%b[]', vs)
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

-- S with top-level KEY set to the JSON text VALUE (added when absent).
local function set_value(s, key, value)
  local vs, ve = value_span(s, key)
  if vs ~= nil then return string.sub(s, 1, vs - 1) .. value .. string.sub(s, ve + 1) end
  local open = string.find(s, "{", 1, true)
  if open == nil then return s end
  return string.sub(s, 1, open) .. key .. ":" .. value .. "," .. string.sub(s, open + 1)
end
"""

_TEMPLATE = r"""-- llmfleet: set the request body's top-level "model" to the served name, and say
-- which backend (ModelDeployment) the request is for.
local SERVED = {served}
local BACKEND = {backend}

{scanner}
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
        if v == nil or v > cap then s = set_value(s, key, cap) end
      end
    end
  end
  if not found then s = set_value(s, '"max_tokens"', cap) end
  return s
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local served = SERVED
  if served == nil then
    -- A fallback chain: the endpoint's own metadata (copied into headers) names it.
    served = headers:get("{served_header}")
    headers:remove("{served_header}")
  else
    headers:replace("{backend_header}", BACKEND)
  end
  local cap = tonumber(headers:get("{max_tokens_header}") or "")
  headers:remove("{max_tokens_header}")
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
    return _fill(_TEMPLATE, {**values, "{scanner}": _SCANNER, "{served_header}": SERVED_HEADER,
                             "{backend_header}": BACKEND_HEADER, "{max_tokens_header}": MAX_TOKENS_HEADER})


def _fill(template: str, values: dict[str, str]) -> str:
    """``template`` with each placeholder replaced, in one pass."""
    return re.sub("|".join(re.escape(k) for k in values), lambda m: values[m.group(0)], template)


_CASCADE = r"""-- llmfleet: a cascade. Each stage is asked in turn (non-streaming, through its
-- cluster); its answer is returned unless an escalation condition holds, and the last
-- stage's answer is returned whatever it is. A client that asked to stream gets the
-- chosen answer as one server-sent event, then [DONE].
local PUBLIC = {public}
local STAGES = {stages}
local MIN_LOGPROB = {min_logprob}
local ON_LENGTH = {on_length}
local ON_EMPTY = {on_empty}
local REFUSALS = {refusals}
local TIMEOUT_MS = {timeout_ms}

{scanner}


local function top(s, key)
  local vs, ve = value_span(s, key)
  if vs == nil then return nil end
  return string.sub(s, vs, ve)
end

-- The answer as a JSON string literal (quotes included), or nil.
local function answer_literal(body)
  for _, key in ipairs({'"content"%s*:%s*"', '"text"%s*:%s*"'}) do
    local _, q = string.find(body, key)
    if q ~= nil then
      local e = string_end(body, q)
      if e ~= nil then return string.sub(body, q, e) end
    end
  end
  return nil
end

local function mean_logprob(body)
  local total, n = 0, 0
  -- Chat: each token's entry ({token, logprob, bytes, top_logprobs}), not its alternatives'.
  for v in string.gmatch(body, '"logprob"%s*:%s*(-?[%d%.eE+-]+)%s*,%s*"bytes"%s*:%s*%b[]%s*,%s*"top_logprobs"') do
    total, n = total + tonumber(v), n + 1
  end
  if n == 0 then
    local list = string.match(body, '"token_logprobs"%s*:%s*(%b[])')  -- completions
    if list ~= nil then
      for v in string.gmatch(list, "-?[%d%.eE+-]+") do total, n = total + tonumber(v), n + 1 end
    end
  end
  if n == 0 then return nil end
  return total / n
end

-- Why this answer is not good enough (nil: it is).
local function escalation(body)
  if ON_LENGTH and string.match(body, '"finish_reason"%s*:%s*"length"') then return "length" end
  local answer = answer_literal(body)
  if ON_EMPTY and (answer == nil or string.find(answer, '^"%s*"$')) then return "empty" end
  if answer ~= nil then
    local lower = string.lower(answer)
    for _, phrase in ipairs(REFUSALS) do
      if string.find(lower, phrase, 1, true) then return "refusal" end
    end
  end
  if MIN_LOGPROB ~= nil then
    local mean = mean_logprob(body)
    if mean == nil or mean < MIN_LOGPROB then return "low confidence" end
  end
  return nil
end

local function as_events(body, chat, usage_wanted)
  local head = '{"id":' .. (top(body, '"id"') or '"cascade"') .. ',"created":' .. (top(body, '"created"') or "0")
    .. ',"model":' .. PUBLIC .. ','
  local answer = answer_literal(body) or '""'
  local finish = string.match(body, '"finish_reason"%s*:%s*("[%a_]+")') or '"stop"'
  local choice
  if chat then
    head = head .. '"object":"chat.completion.chunk",'
    choice = '{"index":0,"delta":{"role":"assistant","content":' .. answer .. '},"logprobs":null,"finish_reason":'
      .. finish .. '}'
  else
    head = head .. '"object":"text_completion",'
    choice = '{"index":0,"text":' .. answer .. ',"logprobs":null,"finish_reason":' .. finish .. '}'
  end
  local out = "data: " .. head .. '"choices":[' .. choice .. ']}\n\n'
  local usage = top(body, '"usage"')
  if usage_wanted and usage ~= nil then
    out = out .. "data: " .. head .. '"choices":[],"usage":' .. usage .. '}\n\n'
  end
  return out .. "data: [DONE]\n\n"
end

function envoy_on_request(handle)
  local body = handle:body()
  if body == nil or body:length() == 0 then return end
  local s = body:getBytes(0, body:length())
  local path = handle:headers():get(":path")
  local chat = string.find(path, "/chat/", 1, true) ~= nil
  local streaming = top(s, '"stream"') == "true"
  local usage_wanted = string.find(s, '"include_usage"%s*:%s*true') ~= nil
  local ask = set_value(set_value(s, '"stream"', "false"), '"stream_options"', "null")
  if MIN_LOGPROB ~= nil then ask = set_value(ask, '"logprobs"', chat and "true" or "1") end
  local why = {}
  for i, stage in ipairs(STAGES) do
    local headers, answer = handle:httpCall(stage.cluster, {
      [":method"] = "POST", [":path"] = path, [":authority"] = "llmfleet-cascade",
      ["content-type"] = "application/json",
    }, set_value(ask, '"model"', stage.served), TIMEOUT_MS)
    local status = headers[":status"] or "503"
    local reason = "HTTP " .. status
    if status == "200" then reason = escalation(answer) end
    if reason == nil or i == #STAGES then
      local out = answer
      local content_type = headers["content-type"] or "application/json"
      if status == "200" then
        out = set_value(answer, '"model"', PUBLIC)
        if streaming then out, content_type = as_events(out, chat, usage_wanted), "text/event-stream" end
      end
      local reply = {[":status"] = status, ["content-type"] = content_type, ["x-llmfleet-cascade-stage"] = stage.name}
      if #why > 0 then reply["x-llmfleet-cascade-escalations"] = table.concat(why, "; ") end
      handle:respond(reply, out)
      return
    end
    why[#why + 1] = stage.name .. ": " .. reason
  end
end
"""


def cascade_source(public_model: str, stages: list[tuple[str, str, str]], *, min_logprob: float | None,
                   on_length: bool, on_empty: bool, refusals: tuple[str, ...], timeout_seconds: int) -> str:
    """Lua source of the per-route filter that runs a cascade; ``stages`` are
    (ModelDeployment name, cluster, served model name), cheapest first."""
    def literal(text: str) -> str:
        return lua_long_string(text) if text else '""'

    entries = ", ".join(
        f"{{name = {literal(name)}, cluster = {literal(cluster)}, "
        f"served = {literal(json.dumps(served, ensure_ascii=True))}}}"
        for name, cluster, served in stages)
    return _fill(_CASCADE, {
        "{public}": literal(json.dumps(public_model, ensure_ascii=True)),
        "{stages}": "{" + entries + "}",
        "{min_logprob}": "nil" if min_logprob is None else repr(float(min_logprob)),
        "{on_length}": "true" if on_length else "false",
        "{on_empty}": "true" if on_empty else "false",
        "{refusals}": "{" + ", ".join(literal(r) for r in refusals) + "}",
        "{timeout_ms}": str(int(timeout_seconds * 1000)),
        "{scanner}": _SCANNER,
    })


def saturation_gate_source() -> str:
    """Lua source of a saturation gate's filter: the gate's router answers 503 with
    ``x-envoy-overloaded`` when its backend is full, and Envoy never retries a response
    that carries that header; this swaps it for SATURATED_HEADER, which the route
    retries on (into the fallback)."""
    return (
        "function envoy_on_response(handle)\n"
        "  local headers = handle:headers()\n"
        '  if headers:get("x-envoy-overloaded") ~= nil then\n'
        '    headers:remove("x-envoy-overloaded")\n'
        f'    headers:replace("{SATURATED_HEADER}", "true")\n'
        "  end\n"
        "end\n"
    )


_USAGE = r"""-- llmfleet: what a response used and when its first token came, for tenants' token
-- limits and for usage accounting. Tokens come from the last "usage" of the response: a
-- JSON body's, or in a stream the final chunk's (sent when the client asks for it with
-- stream_options.include_usage); a stream without usage counts one completion token per
-- event (an engine streams about one token per event) and no prompt tokens. The body
-- passes through untouched and unbuffered: each chunk is scanned as it goes by.
local NS = "llmfleet"

local function last_number(s, key)
  local found = nil
  for n in string.gmatch(s, '"' .. key .. '"%s*:%s*(%d+)') do found = n end
  return found and tonumber(found) or nil
end

function envoy_on_request(handle)
  handle:streamInfo():dynamicMetadata():set(NS, "start_ms", handle:timestamp())
end

function envoy_on_response(handle)
  local start = (handle:streamInfo():dynamicMetadata():get(NS) or {})["start_ms"]
  local stream = string.find(handle:headers():get("content-type") or "", "text/event-stream", 1, true) ~= nil
  local tail, events, first = "", 0, nil
  local prompt, completion, total = nil, nil, nil
  for chunk in handle:bodyChunks() do
    local new = chunk:getBytes(0, chunk:length())
    if stream then
      local _, n = string.gsub(new, "data: {", "")
      if n > 0 and first == nil then first = handle:timestamp() end
      events = events + n
    end
    local s = tail .. new
    prompt = last_number(s, "prompt_tokens") or prompt
    completion = last_number(s, "completion_tokens") or completion
    total = last_number(s, "total_tokens") or total
    tail = string.sub(s, -256)
  end
  if total == nil and stream then
    completion, total = events, events
  end
  -- Fetched again: an object taken before the loop yielded is out of scope after it.
  local meta = handle:streamInfo():dynamicMetadata()
  if total ~= nil then
    meta:set(NS, "tokens", total)
    meta:set(NS, "prompt_tokens", prompt or 0)
    meta:set(NS, "completion_tokens", completion or (total - (prompt or 0)))
  end
  if stream and first ~= nil and start ~= nil then
    meta:set(NS, "first_token_ms", first - start)
  end
end
"""


def usage_source() -> str:
    """The Lua that puts a response's tokens (``llmfleet.tokens``, ``prompt_tokens``,
    ``completion_tokens``) and a stream's time to its first token (``first_token_ms``)
    in dynamic metadata."""
    return _USAGE


_PREFIX = r"""-- llmfleet: prefix affinity. The hash of the first CHARS characters of the request's
-- first user message (chat) or its prompt (completions), in a header the route's hash
-- policy hashes on: every turn of a conversation carries the same first message, so its
-- turns reach the replica whose prefix cache holds the earlier ones. No such text (parts
-- instead of a string, no user message): no header, and the replica is any.
{scanner}
local CHARS = {chars}

-- Start and end of the text the key is made of, or nil. Strings are skipped whole, so
-- braces inside them do not count; a message object is judged when it closes (its
-- "content" may come before its "role").
local function key_span(s)
  local stack, depth, obj, i = {}, 0, nil, 1
  while true do
    local p = string.find(s, '[{}"]', i)
    if p == nil then return nil end
    local c = string.byte(s, p)
    if c == 123 then
      depth = depth + 1
      stack[depth] = obj or false
      obj, i = {}, p + 1
    elseif c == 125 then
      if obj and obj.user and obj.cs then return obj.cs, obj.ce end
      obj = stack[depth] or nil
      depth, i = depth - 1, p + 1
    else
      local e = string_end(s, p)
      if e == nil then return nil end
      local _, colon = string.find(s, '^%s*:%s*', e + 1)
      i = e + 1
      if colon ~= nil and obj and string.byte(s, colon + 1) == 34 then
        local key = string.sub(s, p + 1, e - 1)
        local vs, ve = colon + 1, string_end(s, colon + 1)
        if ve == nil then return nil end
        if key == "role" then
          obj.user = string.sub(s, vs + 1, ve - 1) == "user"
        elseif key == "content" then
          obj.cs, obj.ce = vs + 1, ve - 1
        elseif key == "prompt" and depth == 1 then
          return vs + 1, ve - 1
        end
        i = ve + 1
      end
    end
  end
end

function envoy_on_request(handle)
  local body = handle:body()  -- waits for the whole body: fetch the headers after it
  local headers = handle:headers()
  headers:remove("{header}")
  if body == nil then return end
  local s = body:getBytes(0, body:length())
  local first, last = key_span(s)
  if first == nil or last < first then return end
  last = math.min(last, first + CHARS - 1)
  local h = 0
  for k = first, last do
    h = (h * 31 + string.byte(s, k)) % 4294967291
  end
  headers:replace("{header}", string.format("%x", h))
end
"""


def prefix_key_source(chars: int) -> str:
    """Lua source of the downstream filter that sets PREFIX_HEADER for a route with prefix affinity."""
    return _fill(_PREFIX, {"{scanner}": _SCANNER, "{chars}": str(int(chars)), "{header}": PREFIX_HEADER})
