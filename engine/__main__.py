"""`python -m edgerules ...`: the same command as the `edgerules` console script."""
import sys

from .cli import main

sys.exit(main())
