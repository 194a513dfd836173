"""``python -m lexicons``: the same as ``lexiconsd``."""
import sys

from lexicons.cli import main

sys.exit(main())
