"""`python -m edgerules.drills.upstream ...`: the same as `edgerules upstream ...`."""
import sys

from . import main

sys.exit(main())
