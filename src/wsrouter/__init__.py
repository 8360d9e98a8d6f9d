"""wsrouter: a programmable WebSocket router on Twisted and Autobahn."""

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "build_config", "build_resource", "build_service"]


def __getattr__(name: str) -> Any:  # imported lazily: `import wsrouter` stays cheap and reactor-free
    if name == "build_config":
        from wsrouter.config import build_config

        return build_config
    if name in ("build_resource", "build_service"):
        from wsrouter import service

        return getattr(service, name)
    raise AttributeError(name)
