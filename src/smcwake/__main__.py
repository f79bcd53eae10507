"""``python -m smcwake``: the same as the ``smcwake`` command (see :mod:`smcwake.cli`)."""

import sys

from smcwake.cli import main

sys.exit(main())
