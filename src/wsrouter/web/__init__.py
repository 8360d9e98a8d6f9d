"""The web side: the root resource (upgrades and static files) and safe static files."""
