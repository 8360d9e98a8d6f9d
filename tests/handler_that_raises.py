"""A handler module whose import fails (the start-up check reports it)."""

raise RuntimeError("broken on purpose")
