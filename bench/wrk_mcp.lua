-- wrk script: each wrk thread (one connection each) sends tools/call on its own MCP session
-- and waits for the whole response. Session ids come in as the script's arguments; a bearer
-- credential, when the server authenticates, in MCPFIER_BENCH_BEARER.
local sessions = {}
local next_session = 1
local threads = {}

function setup(thread)
  thread:set("sid_index", next_session)
  next_session = next_session + 1
  table.insert(threads, thread)
end

local n = 0
local failures = 0
local body_fmt = '{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"echo","arguments":{"msg":"hello"}}}'

function init(args)
  local sid = args[sid_index]
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Accept"] = "application/json, text/event-stream"
  wrk.headers["MCP-Protocol-Version"] = "2025-11-25"
  wrk.headers["Mcp-Session-Id"] = sid
  local bearer = os.getenv("MCPFIER_BENCH_BEARER")
  if bearer and bearer ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. bearer
  end
end

function request()
  n = n + 1
  return wrk.format(nil, nil, nil, string.format(body_fmt, n))
end

function response(status, headers, body)
  if status ~= 200 or not string.find(body, "hello", 1, true) or string.find(body, '"isError":true', 1, true) then
    failures = failures + 1
  end
end

function done(summary, latency, requests)
  local failed = 0
  for _, t in ipairs(threads) do
    failed = failed + (t:get("failures") or 0)
  end
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"failures":%d,"errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), failed,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout))
end
