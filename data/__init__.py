"""fedge: data."""
