"""`python -m evo.cli ...` is the `evo` command, like `python -m evo`."""

import sys

from evo.cli import main

sys.exit(main())
