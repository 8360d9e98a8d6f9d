"""
Dynamic targets: a route whose target is C{resolve:NAME} has its target
found per connection, before the handshake is answered, by the
C{[resolvers.NAME]} resolver (docs/resolvers.md).

The outcome is always an HTTP answer, never a dropped connection:

  - a target: connected as if the route had named it (then the route's
    limits, recording and policy apply as usual);
  - C{None} (the token names nothing): 404; no token at all: 400;
  - a L{Refuse}: its status and reason;
  - L{Unavailable} (the store is down) or no answer within the
    resolver's C{timeout}: 503;
  - a target kind resolvers may not give (L{RESOLVABLE}), a plugin that
    cannot be built, or any other error: 502, with a log line.
"""

from __future__ import annotations

from typing import Any, NoReturn

from twisted.internet.defer import Deferred, TimeoutError, fail, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsrouter.config import Resolver as ResolverSettings
from wsrouter.config import RouterConfig, Target
from wsrouter.interfaces import TargetError
from wsrouter.refusal import Refuse
from wsrouter.resolvers.base import (
    RESOLVABLE,
    Resolver,
    ResolveRequest,
    ResolverFactory,
    Unavailable,
    redact_token,
    redacted_session,
    target_of_pair,
    token_of,
    without_token,
)
from wsrouter.resolvers.cache import TargetCache
from wsrouter.resolvers.loading import BUILT_IN, ENTRY_POINT_GROUP, PluginError, build

log = Logger(namespace="wsrouter.resolvers")

__all__ = [
    "BUILT_IN",
    "ENTRY_POINT_GROUP",
    "RESOLVABLE",
    "PluginError",
    "Refuse",
    "ResolveRequest",
    "Resolver",
    "ResolverFactory",
    "Resolvers",
    "Unavailable",
    "check_resolvers",
    "redact_token",
    "redacted_session",
    "target_of_pair",
    "token_of",
    "without_token",
]


class _Built:
    def __init__(self, resolver: Resolver, cache: TargetCache | None):
        self.resolver, self.cache = resolver, cache


class Resolvers:
    """
    The resolvers of the current configuration, built at first use and
    kept while their table is unchanged (a reload keeps their caches and
    connections).
    """

    def __init__(self, reactor: Any):
        self._reactor = reactor
        self._built: dict[ResolverSettings, _Built] = {}

    def use_config(self, config: RouterConfig) -> None:
        """Forget the resolvers C{config} no longer has (closing any that can be closed)."""
        for settings in [s for s in self._built if s not in config.resolvers]:
            close = getattr(self._built.pop(settings).resolver, "close", None)
            if callable(close):
                close()

    def _get(self, settings: ResolverSettings) -> _Built:
        built = self._built.get(settings)
        if built is None:
            cache = TargetCache(settings.cache_ttl, self._reactor) if settings.cache_ttl > 0 else None
            built = self._built[settings] = _Built(build(settings, self._reactor), cache)
        return built

    def resolve(self, settings: ResolverSettings, request: ResolveRequest) -> Deferred[Target]:
        """
        The target for C{request}, or a failure with a L{TargetError}
        carrying the status (module docstring).
        """
        try:
            built = self._get(settings)
        except PluginError as e:
            log.error("resolver {name} cannot start: {problem}", name=settings.name, problem=e)
            return fail(TargetError(f"resolver {settings.name} is not working", 502))
        token = request.token
        if built.cache is not None and token is not None:
            cached = built.cache.get(token)
            if cached is not None:
                return succeed(cached)
        asking: Deferred[Any] = maybeDeferred(built.resolver.resolve, request)
        asking.addTimeout(settings.timeout, self._reactor, onTimeoutCancel=_timed_out)
        return asking.addCallbacks(self._answered, self._failed, callbackArgs=(settings, request, built),
                                   errbackArgs=(settings,))

    @staticmethod
    def _answered(answer: Any, settings: ResolverSettings, request: ResolveRequest, built: _Built) -> Target:
        if isinstance(answer, Refuse):
            raise TargetError(answer.reason, answer.status)
        if answer is None:
            if request.token is None:
                raise TargetError("token not present", 400)
            raise TargetError("no target for this token", 404)
        if not isinstance(answer, RESOLVABLE):
            log.error("resolver {name} gave {answer!r}: resolvers may only give tcp, unix, tls, ws(s), udp, "
                      "unix-dgram and echo targets", name=settings.name, answer=answer)
            raise TargetError(f"resolver {settings.name} gave an unusable target", 502)
        if built.cache is not None and request.token is not None:
            built.cache.put(request.token, answer)
        log.debug("resolver {name} chose {target}", name=settings.name, target=answer.describe())
        return answer

    @staticmethod
    def _failed(reason: Failure, settings: ResolverSettings) -> Target:
        if reason.check(TargetError):  # type: ignore[no-untyped-call, unused-ignore]
            reason.raiseException()
        if reason.check(Refuse):  # type: ignore[no-untyped-call, unused-ignore]
            refusal: Refuse = reason.value  # type: ignore[assignment]
            raise TargetError(refusal.reason, refusal.status)
        if reason.check(Unavailable):  # type: ignore[no-untyped-call, unused-ignore]
            # The details (a file's path, a store's address and its error) are for
            # the operator's log, not for an unauthenticated client.
            log.warn("resolver {name}: {problem}", name=settings.name, problem=reason.value)
            raise TargetError(f"resolver {settings.name}: token store unreachable now (the router's log says why)",
                              503)
        if reason.check(TimeoutError):  # type: ignore[no-untyped-call, unused-ignore]
            log.warn("resolver {name} gave no answer within {timeout}s (its timeout)",
                     name=settings.name, timeout=settings.timeout)
            raise TargetError(f"resolver {settings.name} timed out", 503)
        log.failure("resolver {name} failed", reason, name=settings.name)
        raise TargetError(f"resolver {settings.name} failed", 502)


def _timed_out(result: object, timeout: float) -> NoReturn:
    """
    Whatever a cancelled lookup ended with (an HTTP client wraps the
    cancellation in its own error), it timed out; that failure is dropped.
    """
    raise TimeoutError(f"no answer within {timeout} s")


def check_resolvers(config: RouterConfig) -> list[tuple[str, str]]:
    """
    Build every resolver once (on a MemoryReactor: nothing connects), as a
    start-up check (and C{wsrouter check}'s): a plugin that cannot be
    loaded (key C{plugin}), or refuses its source (key C{source}: a
    template that makes no target, a JWT key file that is not a key, a
    token file or directory that is missing or cannot be read).
    """
    from twisted.internet.testing import MemoryReactor

    problems = []
    for settings in config.resolvers:
        try:
            resolver = build(settings, MemoryReactor())
        except PluginError as e:
            problems.append((f"resolvers.{settings.name}.{e.key}", str(e)))
            continue
        close = getattr(resolver, "close", None)
        if callable(close):
            close()
    return problems
