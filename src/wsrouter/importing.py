"""
Importing the modules a configuration names (C{python:package.module:factory}
handlers, C{package.module:attribute} resolver plugins).

They are looked up as Python does, and then in the current directory, as
C{python -m wsrouter} would: so C{wsrouter --route
'/echo=python:examples.handlers.echo:Echo'} run from the checkout finds
C{examples/} whichever way the router was started (the C{wsrouter}
script's own C{sys.path} has its C{bin} directory, not the current one).
The current directory comes last: an installed package or the standard
library is never shadowed by a file that happens to be there.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType


def import_named(module: str) -> ModuleType:
    """
    C{importlib.import_module(module)}, with the current directory searched
    after everything else.

    @raise ImportError: as C{importlib.import_module}; any error the module raises.
    """
    here = os.getcwd()
    if not any(entry in ("", ".", here) for entry in sys.path):
        sys.path.append(here)
    return importlib.import_module(module)
