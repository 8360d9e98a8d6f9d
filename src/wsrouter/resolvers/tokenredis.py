"""
websockify's C{TokenRedis}: the token is a Redis key (after an optional
namespace); its value is C{host:port} or JSON C{{"host": "host:port"}}.

C{--token-source} is websockify's C{host[:port[:db[:password[:namespace]]]]}
(empty fields take the defaults 6379 and 0; a field holding C{:} is
written in double quotes: C{host::::"a:b"}).

Client: redis-py (5+, maintained by Redis Inc.).  Its synchronous client
runs on the reactor's thread pool: the reactor here is not asyncio, so its
asyncio client would need a second event loop, and the Twisted-native
C{txredisapi} is unmaintained.  One connection pool per resolver; every
call has a socket and connect timeout, so a thread never waits for long;
when Redis cannot be reached the lookup raises L{Unavailable} (503), and
the pool reconnects by itself on a later lookup once Redis is back.
"""

from __future__ import annotations

import json
import re
from typing import Any

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from wsrouter.config import Target
from wsrouter.refusal import Refuse
from wsrouter.resolvers.base import ResolveRequest, Unavailable, split_target

log = Logger(namespace="wsrouter.resolvers")

_SOURCE_SPLIT = re.compile(
    r'(?<=^)"([^"]+)"(?=:|$)'
    r'|(?<=:)"([^"]+)"(?=:|$)'
    r'|(?<=^)([^:]*)(?=:|$)'
    r'|(?<=:)([^:]*)(?=:|$)',
)


def parse_source_args(source: str) -> list[str]:
    """websockify's split at C{:}, with C{"..."} holding a field that contains C{:}."""
    return [m[0] or m[1] or m[2] or m[3] for m in _SOURCE_SPLIT.findall(source)]


def parse_redis_source(source: str) -> dict[str, Any]:
    """
    C{host[:port[:db[:password[:namespace]]]]} as redis-py arguments and a namespace prefix.

    @raise ValueError: not that form (the message shows the form).
    """
    fields = parse_source_args(source)
    if not 1 <= len(fields) <= 5 or not fields[0]:
        raise ValueError(f"token source {source!r} is not host[:port[:db[:password[:namespace]]]]")
    fields += [""] * (5 - len(fields))
    host, port, db, password, namespace = fields
    if not (port or "6379").isdigit() or not (db or "0").isdigit():
        raise ValueError(f"token source {source!r}: port and db must be numbers")
    return {"host": host, "port": int(port or 6379), "db": int(db or 0), "password": password or None,
            "namespace": namespace + ":" if namespace else ""}


def parse_value(value: bytes) -> Target | None:
    """
    A stored value as websockify reads it: JSON C{{"host": "h:p"}} or plain
    C{h:p}; C{None} (logged) for anything else.
    """
    text = value.decode("utf-8", errors="replace").strip()
    try:
        if text.startswith("{"):
            return split_target(str(json.loads(text)["host"]))
        return split_target(text)
    except (ValueError, KeyError, TypeError) as e:
        log.error("TokenRedis: a stored value is not host:port or {{\"host\": \"host:port\"}}: {problem}",
                  problem=e)
        return None


class TokenRedis:
    """Looks tokens up in Redis on the reactor's thread pool (see the module docstring)."""

    #: Seconds for Redis to accept and to answer; a lookup's own time limit is the resolver's timeout.
    socket_timeout = 2.0

    def __init__(self, settings: Any, reactor: Any):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._reactor = reactor
        args = parse_redis_source(settings.source)
        self.namespace: str = args.pop("namespace")
        #: Where the store is, for reasons and log lines (never the password).
        self.where = f"{args['host']}:{args['port']}/{args['db']}"
        self._password: str | None = args["password"]
        timeout = min(self.socket_timeout, settings.timeout)
        # No retries inside a lookup (redis-py 6 retries three times with backoff by default):
        # the client retries by connecting again, the pool reconnects when Redis is back.
        self._client = redis.Redis(**args, socket_timeout=timeout, socket_connect_timeout=timeout,
                                   retry=Retry(NoBackoff(), 0))
        self._errors: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError)
        self._down = False

    def _get(self, key: str) -> bytes | None:
        try:
            value: bytes | None = self._client.get(key)  # type: ignore[assignment]
        except self._errors as e:
            raise Unavailable(f"token store (Redis {self.where}) unreachable: {self._reason(e)}") from None
        return value

    def _reason(self, error: BaseException) -> str:
        """redis-py's message (its kind when it has none), with the password, should it appear, hidden."""
        text = " ".join(str(error).split()) or type(error).__name__
        if self._password:
            text = text.replace(self._password, "REDACTED")
        return f"{type(error).__name__}: {text}" if text != type(error).__name__ else text

    def resolve(self, request: ResolveRequest) -> Any:
        if not request.token:
            raise Refuse(400, "token not present")
        waiting = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), self._get,
                                    self.namespace + request.token)
        return waiting.addCallbacks(self._found, self._failed)

    def _found(self, value: bytes | None) -> Target | None:
        if self._down:
            self._down = False
            log.info("TokenRedis: Redis {where} answers again", where=self.where)
        return None if value is None else parse_value(value)

    def _failed(self, reason: Any) -> Any:
        if reason.check(Unavailable) and not self._down:
            self._down = True
            log.warn("TokenRedis: {problem}; answering 503 until it is back", problem=reason.value)
        return reason

    def close(self) -> None:
        """Close the pool's connections (a reload that drops this resolver)."""
        self._client.close()
