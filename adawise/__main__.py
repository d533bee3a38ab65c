"""``python -m adawise`` is the ``adawise`` command."""

import sys

from adawise.cli import main

sys.exit(main())
