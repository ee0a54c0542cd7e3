"""fedge: export."""
