"""``python -m fedge`` runs the ``fedge`` command."""

import sys

from fedge.cli import main

sys.exit(main())
