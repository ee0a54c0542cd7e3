"""One module per ``fedge`` subcommand, and the flags and helpers some of them share."""
