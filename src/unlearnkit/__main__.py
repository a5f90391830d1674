"""``python -m unlearnkit``: the command line, as the ``unlearnkit`` script runs it."""

import sys

from .cli import main

sys.exit(main())
