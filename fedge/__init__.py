"""fedge command-line interface and shared constants."""
