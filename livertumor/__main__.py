"""``python -m livertumor``: the same command as ``livertumor``."""

import sys

from .cli import main

sys.exit(main())
