-- Appended to every wrk run of the bench: prints one machine-readable line after wrk's own report.
-- Latencies are in microseconds; errors.status counts responses outside 2xx/3xx.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, ' ..
    '"p50_us": %.1f, "p75_us": %.1f, "p90_us": %.1f, "p99_us": %.1f, "mean_us": %.1f, "max_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(75), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
