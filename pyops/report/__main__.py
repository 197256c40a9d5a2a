"""``python -m mobilefuse.report``."""

import sys

from mobilefuse.report.cli import main

sys.exit(main())
