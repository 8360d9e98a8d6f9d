"""wsrouter: a programmable WebSocket router on Twisted and Autobahn."""

__version__ = "0.1.0"
