-- wrk script for benches/auth-load.sh's "fresh token" rows: every request carries the next
-- bearer token of the file named by TOKENS_FILE (one per line), so the gateway verifies a
-- signature per request instead of hitting its verified-token cache. Prints the same RESULT
-- line as wrk-report.lua, plus how many tokens the file held (a run that sent more requests
-- than that reused tokens and is reported as such).
local tokens = {}
local i = 0

init = function(args)
  for line in io.lines(os.getenv("TOKENS_FILE")) do
    tokens[#tokens + 1] = "Bearer " .. line
  end
end

request = function()
  i = i + 1
  if i > #tokens then i = 1 end
  wrk.headers["Authorization"] = tokens[i]
  return wrk.format()
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d " ..
    "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
