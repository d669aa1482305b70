"""What operators see of the manager and the agent: Prometheus metrics, liveness and readiness,
structured logs with a request id. Shared by both daemons; see docs/operations.md."""
