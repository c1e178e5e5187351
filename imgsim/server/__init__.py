"""Server plumbing both services share (gRPC asyncio server, health, reflection, metrics, auth, shutdown).

The client never imports this package: it carries what only servers need (prometheus-client)."""
