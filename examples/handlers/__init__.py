"""
Example handlers for the C{python:} target (docs/handlers.md): run from the
checkout, e.g. C{--route '/echo=python:examples.handlers.echo:Echo'}.
"""
