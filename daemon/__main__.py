"""``python -m odal.daemon --config FILE``: the daemon in the foreground (what ``odal-daemon`` runs)."""

import sys

from odal.daemon.cli import daemon_main

sys.exit(daemon_main())
