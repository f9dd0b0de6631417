"""``python -m qcompile`` runs the command line."""

import sys

from qcompile.cli.main import main

sys.exit(main())
