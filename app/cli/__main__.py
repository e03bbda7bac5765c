"""``python -m app.cli ...`` = the ``lethe`` console script."""
import sys

from . import main

sys.exit(main())
