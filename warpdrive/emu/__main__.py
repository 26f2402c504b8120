"""`python -m warpdrive.emu <model> --socket PATH`: serve a bundled device model over vfio-user."""

import sys

from .serve import main

sys.exit(main())
