"""``python -m freshviews``: the ``freshviews`` command line (see :mod:`freshviews.cli`)."""

import sys

from freshviews.cli import main

sys.exit(main())
