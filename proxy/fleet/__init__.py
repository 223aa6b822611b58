"""Fleet coordination over JetStream KV: the shell around policies/fleet.py (docs/fleet.md)."""
