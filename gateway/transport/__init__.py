"""The websockets server: handshake checks, /healthz and /metrics, per-connection tasks, drain."""
