"""``python -m controlplane.demo`` (``make demo``); see controlplane/demo/__init__.py."""

import sys

from controlplane.demo.run import main

try:
    sys.exit(main())
except KeyboardInterrupt:  # during start-up; everything started is stopped by then
    sys.exit(130)
