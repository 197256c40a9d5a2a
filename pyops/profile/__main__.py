"""``python -m mobilefuse.profile``."""

import sys

from mobilefuse.profile.cli import main

sys.exit(main())
