"""``python -m freshviews.scoreboard``: the reference backend's commands (see :mod:`freshviews.scoreboard.cli`)."""

import sys

from freshviews.scoreboard.cli import main

sys.exit(main())
