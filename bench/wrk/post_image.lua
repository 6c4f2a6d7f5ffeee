-- POST one image file, count answers by status and response bytes, print a JSON summary.
--
--   wrk -t1 -c4 -d20s -s bench/wrk/post_image.lua URL -- IMAGE [ACCEPT] [CONTENT_TYPE]
--
-- IMAGE is read once; ACCEPT defaults to image/png, CONTENT_TYPE to image/jpeg.
-- The summary (one line, prefixed "WRKJSON ") has: requests, ok (2xx), non2xx, by_status,
-- socket errors, bytes of the 2xx bodies, duration (s) and latency percentiles (ms).

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local path = args[1]
  local f = assert(io.open(path, "rb"), "cannot read " .. tostring(path))
  local body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.body = body
  wrk.headers["Content-Type"] = args[3] or "image/jpeg"
  wrk.headers["Accept"] = args[2] or "image/png"
  ok, non2xx, body_bytes = 0, 0, 0
  by_status = {}
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    ok = ok + 1
    body_bytes = body_bytes + #body
  else
    non2xx = non2xx + 1
  end
  by_status[status] = (by_status[status] or 0) + 1
end

function done(summary, latency, requests)
  local total_ok, total_non2xx, total_bytes, statuses = 0, 0, 0, {}
  for _, t in ipairs(threads) do
    total_ok = total_ok + t:get("ok")
    total_non2xx = total_non2xx + t:get("non2xx")
    total_bytes = total_bytes + t:get("body_bytes")
    for code, n in pairs(t:get("by_status")) do
      statuses[code] = (statuses[code] or 0) + n
    end
  end
  local parts = {}
  for code, n in pairs(statuses) do
    table.insert(parts, string.format('"%d": %d', code, n))
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "ok": %d, "non2xx": %d, "by_status": {%s}, ' ..
    '"socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, ' ..
    '"body_bytes": %d, "duration_s": %.6f, "latency_ms": {"mean": %.3f, "p50": %.3f, ' ..
    '"p90": %.3f, "p95": %.3f, "p99": %.3f, "max": %.3f}}\n',
    summary.requests, total_ok, total_non2xx, table.concat(parts, ", "),
    e.connect, e.read, e.write, e.timeout, total_bytes, summary.duration / 1e6,
    latency.mean / 1e3, latency:percentile(50) / 1e3, latency:percentile(90) / 1e3,
    latency:percentile(95) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3))
end
