"""``python -m freshviews.worker``: the subscriber process (see :mod:`freshviews.worker.cli`)."""

import sys

from freshviews.worker.cli import main

sys.exit(main())
