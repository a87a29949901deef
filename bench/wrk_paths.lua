-- wrk script for bench/serving.py: requests cycle through the paths file given after `--`
-- (one path per line, from a random start), and `done` prints one JSON line with the latency
-- percentiles (microseconds), the request count, the run's duration and the errors by kind.
local paths = {}
local next_index = 0

init = function(args)
  for line in io.lines(args[1]) do
    if #line > 0 then paths[#paths + 1] = line end
  end
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  next_index = math.random(#paths)
end

request = function()
  next_index = next_index % #paths + 1
  return wrk.format("GET", paths[next_index])
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nWRK_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
      .. '"max_us": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, '
      .. '"status_errors": %d, "timeouts": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
