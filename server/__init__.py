"""fedge: server."""
