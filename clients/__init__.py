"""fedge: clients."""
