import sys

from t5pegasus.cli import main

sys.exit(main())
