"""fedge: models."""
