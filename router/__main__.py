"""``python -m router`` is the ``ringleader`` command."""

import sys

from .cli import main

sys.exit(main())
