"""The small core every fedge package may import: errors, run configuration, record types,
box geometry, atomic writes and the run-name rule. It imports no other fedge package."""
