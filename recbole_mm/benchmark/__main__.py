"""``python -m recbole_mm.benchmark``: see :mod:`recbole_mm.benchmark.cli`."""
import sys

from recbole_mm.benchmark.cli import main

sys.exit(main())
