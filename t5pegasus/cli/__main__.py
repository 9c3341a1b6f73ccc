"""`python -m t5pegasus.cli COMMAND ...`: the same as the `t5pegasus` command."""

import sys

from t5pegasus.cli import main

sys.exit(main())
