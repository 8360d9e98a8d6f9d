"""
Plugins by name: what a C{[resolvers.NAME]} table's C{plugin} loads.

In order:
  1. a built-in name: websockify's C{TokenFile}, C{ReadOnlyTokenFile},
     C{TokenFileName}, C{TokenRedis}, C{BaseTokenAPI}, C{JSONTokenApi},
     C{JWTTokenApi}, C{UnixDomainSocketDirectory} (also spelt
     C{websockify.token_plugins.NAME}, as websockify completes a bare
     name), and C{template};
  2. an entry point of the C{wsrouter.resolvers} group with that name;
  3. C{package.module:attribute} (looked for on C{sys.path}, then in the
     current directory: L{wsrouter.importing});
  4. C{package.module.Class} (websockify's spelling).

What is loaded is then, in order: a websockify plugin class (it has a
C{lookup(token)} method; made with the source, C{lookup} runs on the
reactor's thread pool since it may block); an object with a
C{resolve(request)} method, used as it is; or a factory, called with the
C{[resolvers.NAME]} table (L{wsrouter.config.Resolver}) and the reactor,
that returns such an object.
"""

from __future__ import annotations

import inspect
from importlib.metadata import entry_points
from typing import Any

from twisted.internet.threads import deferToThreadPool

from wsrouter.config import Resolver as ResolverSettings
from wsrouter.config import Target
from wsrouter.importing import import_named
from wsrouter.resolvers.base import Resolver, ResolveRequest, target_of_pair

#: The entry point group third-party resolvers register under.
ENTRY_POINT_GROUP = "wsrouter.resolvers"

#: Built-in plugin names and where they live (imported when used: TokenRedis
#: needs redis-py and JWTTokenApi jwcrypto, the "resolvers" extra).
BUILT_IN: dict[str, str] = {
    "TokenFile": "wsrouter.resolvers.tokenfile:TokenFile",
    "ReadOnlyTokenFile": "wsrouter.resolvers.tokenfile:ReadOnlyTokenFile",
    "TokenFileName": "wsrouter.resolvers.tokenfile:TokenFileName",
    "UnixDomainSocketDirectory": "wsrouter.resolvers.tokenfile:UnixDomainSocketDirectory",
    "TokenRedis": "wsrouter.resolvers.tokenredis:TokenRedis",
    "BaseTokenAPI": "wsrouter.resolvers.httpapi:BaseTokenAPI",
    "JSONTokenApi": "wsrouter.resolvers.httpapi:JSONTokenApi",
    "JWTTokenApi": "wsrouter.resolvers.jwtapi:JWTTokenApi",
    "template": "wsrouter.resolvers.template:TemplateResolver",
}

_WEBSOCKIFY_PREFIX = "websockify.token_plugins."


class PluginError(ValueError):
    """
    A plugin name that loads nothing usable, or a plugin that refused its source; says which.

    @ivar key: the C{[resolvers.NAME]} key at fault: C{"plugin"} or C{"source"}.
    """

    def __init__(self, message: str, key: str = "plugin"):
        super().__init__(message)
        self.key = key


def find(name: str) -> Any:
    """
    The object a plugin name stands for (module docstring, first list).

    @raise PluginError: nothing by that name.
    """
    short = name[len(_WEBSOCKIFY_PREFIX):] if name.startswith(_WEBSOCKIFY_PREFIX) else name
    if short in BUILT_IN:
        name = BUILT_IN[short]
    for point in entry_points(group=ENTRY_POINT_GROUP, name=name):
        return point.load()
    module, sep, attribute = name.partition(":")
    if not sep:
        module, _, attribute = name.rpartition(".")
    if not module or not attribute:
        raise PluginError(f"unknown resolver plugin {name!r}: use one of {', '.join(BUILT_IN)}, "
                          f"an entry point of {ENTRY_POINT_GROUP}, or package.module:attribute")
    try:
        found = import_named(module)
        for part in attribute.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as e:
        raise PluginError(f"cannot load resolver plugin {name!r}: {e}") from None
    return found


class WebsockifyPlugin:
    """
    A websockify token plugin class (C{lookup(token)} returning
    C{(host, port)} or C{None}) as a resolver; C{lookup} runs on the
    reactor's thread pool.
    """

    def __init__(self, plugin: Any, reactor: Any):
        self.plugin, self._reactor = plugin, reactor

    def resolve(self, request: ResolveRequest) -> Any:
        if request.token is None:
            return None
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), self.plugin.lookup,
                                 request.token).addCallback(self._target)

    @staticmethod
    def _target(pair: Any) -> Target | None:
        if pair is None:
            return None
        host, port = pair
        return target_of_pair(host, port)


def build(settings: ResolverSettings, reactor: Any) -> Resolver:
    """
    The resolver for a C{[resolvers.NAME]} table.

    @raise PluginError: the plugin cannot be found or refuses its settings.
    """
    found = settings.plugin
    if isinstance(found, str):
        found = find(found.strip())
    try:
        if inspect.isclass(found) and callable(getattr(found, "lookup", None)):
            plugin: Any = found
            return WebsockifyPlugin(plugin(settings.source), reactor)
        if callable(getattr(found, "resolve", None)) and not inspect.isclass(found):
            resolver: Resolver = found
            return resolver
        if callable(found):
            made = found(settings, reactor)
            if callable(getattr(made, "resolve", None)):
                return made  # type: ignore[no-any-return]
            raise PluginError(f"resolver plugin {settings.plugin!r} made {made!r}, which has no resolve(request)")
    except (ValueError, TypeError, OSError, ImportError) as e:
        if isinstance(e, PluginError):
            raise
        # The plugin was found: what it refuses (ValueError, OSError) is its source.
        key = "source" if isinstance(e, ValueError | OSError) else "plugin"
        raise PluginError(f"{settings.plugin}: {e}" if key == "source"
                          else f"resolver {settings.name} ({settings.plugin}): {e}", key) from None
    raise PluginError(f"resolver plugin {settings.plugin!r} is neither a factory nor has resolve(request)")
