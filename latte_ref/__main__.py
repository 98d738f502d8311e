"""``python -m latte_ref COMMAND``: the same as the ``latte-ref`` command."""

import sys

from .cli import main

sys.exit(main())
