"""`python -m warpdrive ...`: the `warpdrive` command."""

import sys

from .cli import main

sys.exit(main())
