"""``python -m xensr``: the ``xensr`` command line."""

import sys

from .cli import main

sys.exit(main())
