"""
The embedding API: assemble the router from a configuration, as a
twisted.web resource or a whole service (one process, or C{--workers}).
"""

from wsrouter.service.single import RouterService, build_resource, build_service

__all__ = ["RouterService", "build_resource", "build_service"]
