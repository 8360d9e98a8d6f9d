"""
The operator's side of the router: Prometheus metrics, a health check, a
live status page and session watching (shared sessions), and JSON log lines.

Everything here hangs off a L{wsrouter.gateway.Gateway} through its
observer hooks; nothing in the relay's per-message path knows about it
except a watched session's tap (L{wsrouter.ops.watch}).
"""
