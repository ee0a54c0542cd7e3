"""One module per ``fedge`` subcommand."""
