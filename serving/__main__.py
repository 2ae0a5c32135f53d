"""``python -m odal.serving [TF Serving flags]``: the embedded TF-Serving-compatible server (``odal serve``)."""

import sys

from odal.serving.server import main

sys.exit(main(sys.argv[1:]))
