"""``python -m mobilefuse.bench``: see :mod:`mobilefuse.bench.runner`."""

from __future__ import annotations

from mobilefuse.bench.runner import main

if __name__ == "__main__":
    raise SystemExit(main())
