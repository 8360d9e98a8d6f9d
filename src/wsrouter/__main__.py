"""`wsrouter` (and `python -m wsrouter`): see L{wsrouter.cli.main}."""

from __future__ import annotations

import sys

from wsrouter.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
