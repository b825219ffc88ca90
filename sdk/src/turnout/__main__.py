"""``python -m turnout``: see :mod:`turnout.cli`."""

import sys

from turnout.cli import main

sys.exit(main())
