"""``python -m lexicons``: the same as ``lexiconsd``."""
import sys

from .cli import main

sys.exit(main())
