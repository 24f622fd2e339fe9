"""A serving deployment simulated from the per-step model: workload -> step-time tables -> event-driven
simulation of prefill and decode pools -> latency and throughput metrics -> plan search and a
request-level trace. `tracegen deploy` is the entry point."""
