-- wrk script for bench/gateway.py: POST a fixed JSON body with fixed headers, count responses by status, and
-- print one parseable summary line at the end.
--
--   wrk --latency -t 2 -c 64 -d 15s -s bench/classify.lua http://127.0.0.1:8000/v1/classify -- BODY_FILE \
--       "Authorization: Bearer KEY" "anthropic-version: 2023-06-01"
--
-- Arguments after `--`: the file holding the request body, then any number of "Name: value" headers
-- (content-type: application/json is always sent). The URL's path is the path requested.
--
-- done() prints a single line starting with `WRK_JSON ` followed by a JSON object:
--   requests, duration_s, rps, bytes, latency_us {p50, p90, p99, mean, max, stdev},
--   errors {connect, read, write, timeout, status}, status {"200": n, "503": n, ...}
-- `errors.status` is wrk's own count of responses with status > 399; `status` counts every status seen
-- (from response(), summed over the threads), so 3xx answers show there too.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local body_file = args[1]
  if body_file == nil then
    error("classify.lua: pass the body file after --")
  end
  local f = assert(io.open(body_file, "rb"))
  local body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
  for i = 2, #args do
    local name, value = string.match(args[i], "^([^:]+):%s*(.*)$")
    if name ~= nil then
      wrk.headers[name] = value
    end
  end
  statuses = {}
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

local function pct(latency, p)
  return latency:percentile(p)
end

function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses")
    if counts ~= nil then
      for status, n in pairs(counts) do
        merged[status] = (merged[status] or 0) + n
      end
    end
  end
  local parts = {}
  for status, n in pairs(merged) do
    table.insert(parts, string.format('"%d": %d', status, n))
  end
  table.sort(parts)
  local duration_s = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_s": %.6f, "rps": %.3f, "bytes": %d, '
      .. '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "mean": %.1f, "max": %d, "stdev": %.1f}, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d, "status": %d}, '
      .. '"status": {%s}}\n',
    summary.requests, duration_s, duration_s > 0 and summary.requests / duration_s or 0, summary.bytes,
    pct(latency, 50), pct(latency, 90), pct(latency, 99), latency.mean, latency.max, latency.stdev,
    e.connect, e.read, e.write, e.timeout, e.status,
    table.concat(parts, ", ")))
end
