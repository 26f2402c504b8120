"""`python -m warpdrive.cli ...` (same as the `warpdrive` console script)."""

import sys

from . import main

sys.exit(main())
