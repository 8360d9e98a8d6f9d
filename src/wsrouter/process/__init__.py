"""Processes the router starts and supervises: wrapped programs (and, through the same supervisor, workers)."""
