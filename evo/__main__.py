"""`python -m evo ...` is the `evo` command (for environments where the console script is not installed)."""

import sys

from evo.cli import main

sys.exit(main())
