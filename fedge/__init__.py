"""fedge: the command line (``fedge.cli``, ``fedge.commands``, ``fedge.compare``) on top of
the small core (``fedge.core``) that every other package uses."""
