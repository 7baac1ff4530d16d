"""``python -m trainers``: see ``trainers/cli.py``."""

import sys

from trainers.cli import main

sys.exit(main())
