"""``python -m telephony``: the same CLI as the ``telephony`` command."""

import sys

from .cli import main

sys.exit(main())
