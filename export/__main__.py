"""`python -m bertqa.export ...`: the same as `bertqa export ...`."""

import sys

from bertqa.export.cli import main

sys.exit(main())
