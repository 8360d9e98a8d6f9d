"""
Prometheus metrics of one router, in their own L{CollectorRegistry} (never
the process-global one), so two routers in one process, and tests, never
share counters.

Counters that only grow when something happens (sessions opened,
refusals, target failures, recording errors, dropped watchers) are fed
by the gateway's hooks; what can be read off live state (open sessions,
bytes each way, wrapped programs, descriptor room) is read at scrape time.
"""

from __future__ import annotations

import re
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from wsrouter.interfaces import SessionInfo

if TYPE_CHECKING:
    from wsrouter.gateway import Gateway
    from wsrouter.session import Session

__all__ = ["CONTENT_TYPE_LATEST", "RouterMetrics", "reason_label"]

#: Distinct refusal reasons kept per status; more are counted as C{other}.
MAX_REASONS = 32
_PLAIN_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


def reason_label(reason: str) -> str:
    """
    A bounded label for a refusal's reason: its leading plain words, up to
    the first one with a digit, a path, an address or a colon -- details a
    client chooses (paths, origins) never become label values.
    """
    if reason.startswith("origin ") and " not allowed" in reason:
        return "origin not allowed"
    words = []
    for word in reason.split():
        plain = word.rstrip(":,;")
        if not _PLAIN_WORD.fullmatch(plain):
            break
        words.append(plain.lower())
        if plain != word:
            break
    return " ".join(words)[:48] or "other"


class RouterMetrics:
    """
    The counters of one gateway (a L{wsrouter.interfaces.SessionObserver}
    and L{wsrouter.interfaces.HandshakeWatcher}).

    @param programs: the wrapped programs now (empty for an embedded resource).
    @param watchers_open: how many watchers are attached now.
    """

    def __init__(self, gateway: Gateway, programs: Callable[[], Iterable[Any]] = tuple,
                 watchers_open: Callable[[], int] = lambda: 0):
        self._gateway = gateway
        self.programs = programs
        self.watchers_open = watchers_open
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.sessions_total = Counter("wsrouter_sessions", "Sessions opened, by route.", ["route"],
                                      registry=registry)
        self.refusals = Counter("wsrouter_handshake_refusals", "Handshakes refused, by HTTP status and reason.",
                                ["status", "reason"], registry=registry)
        self.target_failures = Counter("wsrouter_target_connect_failures",
                                       "Targets that could not be connected, by route.", ["route"], registry=registry)
        self.recording_errors = Counter("wsrouter_recording_errors",
                                        "Sessions whose recording could not be created or written.",
                                        registry=registry)
        self.watchers_dropped = Counter("wsrouter_watchers_dropped",
                                        "Watchers dropped for reading too slowly (close 4008).", registry=registry)
        #: The worker's number under C{--workers N} (its samples are labelled with it); C{None}: one process.
        self.worker: str | None = None
        self.closed_bytes: dict[str, Tally[str]] = {"from_client": Tally(), "to_client": Tally()}
        self._reasons: dict[str, set[str]] = {}
        registry.register(_Live(self))
        gateway.observe(self)
        gateway.watch_handshakes(self)

    # -- gateway hooks --------------------------------------------------------------

    def session_opened(self, session: Session) -> None:
        self.sessions_total.labels(session.info.route.describe()).inc()

    def session_closed(self, session: Session) -> None:
        route = session.info.route.describe()
        stats = session.stats
        self.closed_bytes["from_client"][route] += stats.bytes_from_client
        self.closed_bytes["to_client"][route] += stats.bytes_to_client
        if getattr(session.recorder, "failed", False):
            self.recording_errors.inc()

    def handshake_refused(self, status: int, reason: str) -> None:
        label = reason_label(reason)
        seen = self._reasons.setdefault(str(status), set())
        if label not in seen:
            if len(seen) >= MAX_REASONS:
                label = "other"
            seen.add(label)
        self.refusals.labels(str(status), label).inc()

    def target_failed(self, info: SessionInfo) -> None:
        self.target_failures.labels(info.route.describe()).inc()

    # -- reading ----------------------------------------------------------------------

    def render(self) -> bytes:
        """
        The Prometheus text exposition of every metric now; with
        C{--workers N} every sample carries a C{worker} label (the worker
        that answered: each has counters of its own).
        """
        if self.worker is None:
            return generate_latest(self.registry)
        return generate_latest(_Labelled(self.registry, "worker", self.worker))

    def live_sessions(self) -> list[Session]:
        return [s for s in self._gateway.sessions.values() if s.is_open and not s.ended]

    def descriptor_guard(self) -> Any:
        return self._gateway.descriptors

    def balanced_targets(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Each target of each balanced route, C{(route, state)}: open sessions and whether it is down."""
        gateway = self._gateway
        for route in gateway.config.routes:
            balancer = gateway.balancing.balancer(route) if route.balance is not None else None
            for state in balancer.state() if balancer is not None else ():
                yield route.describe(), state


class _Labelled:
    """A registry's metrics with one more label on every sample (C{generate_latest} reads its C{collect})."""

    def __init__(self, registry: CollectorRegistry, name: str, value: str):
        self._registry = registry
        self._name = name
        self._value = value

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            metric.samples = [sample._replace(labels={**sample.labels, self._name: self._value})
                              for sample in metric.samples]
            yield metric


class _Live(Collector):
    """The values read off live state at each scrape."""

    def __init__(self, metrics: RouterMetrics):
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        sessions = metrics.live_sessions()
        open_now = GaugeMetricFamily("wsrouter_sessions_open", "Sessions open now, by route.", labels=["route"])
        for route, count in sorted(Tally(s.info.route.describe() for s in sessions).items()):
            open_now.add_metric([route], count)
        yield open_now
        yield from self._bytes(sessions)
        yield from self._programs()
        yield from self._descriptors()
        yield GaugeMetricFamily("wsrouter_watchers_open", "Watchers attached to sessions now.",
                                value=metrics.watchers_open())
        yield from self._targets()

    def _targets(self) -> Iterator[Metric]:
        open_now = GaugeMetricFamily("wsrouter_target_sessions_open",
                                     "Sessions open now on each target of a balanced route.",
                                     labels=["route", "target"])
        down = GaugeMetricFamily("wsrouter_target_down", "1 while a balanced route's target is marked down.",
                                 labels=["route", "target"])
        for route, state in self._metrics.balanced_targets():
            open_now.add_metric([route, state["target"]], state["open"])
            down.add_metric([route, state["target"]], 1 if state["down"] else 0)
        yield open_now
        yield down

    def _bytes(self, sessions: list[Session]) -> Iterator[Metric]:
        for key, what in (("from_client", "from clients to targets"), ("to_client", "from targets to clients")):
            totals = Tally(self._metrics.closed_bytes[key])
            for session in sessions:
                totals[session.info.route.describe()] += getattr(session.stats, "bytes_" + key)
            family = CounterMetricFamily(f"wsrouter_bytes_{key}", f"Payload bytes {what}, by route.",
                                         labels=["route"])
            for route, count in sorted(totals.items()):
                family.add_metric([route], count)
            yield family

    def _programs(self) -> Iterator[Metric]:
        running = GaugeMetricFamily("wsrouter_program_running", "1 while the wrapped program runs.",
                                    labels=["program"])
        restarts = CounterMetricFamily("wsrouter_program_restarts", "Times the wrapped program was restarted.",
                                       labels=["program"])
        for program in self._metrics.programs():
            running.add_metric([program.name], 1 if program.running else 0)
            restarts.add_metric([program.name], program.restarts)
        yield running
        yield restarts

    def _descriptors(self) -> Iterator[Metric]:
        guard = self._metrics.descriptor_guard()
        if guard is None or not guard.enabled or guard.limit is None:
            return
        estimate = guard.estimate()
        yield GaugeMetricFamily("wsrouter_descriptors_open", "Open file descriptors (an upper bound).",
                                value=estimate)
        yield GaugeMetricFamily("wsrouter_descriptors_limit", "The open-file limit.", value=guard.limit)
        yield GaugeMetricFamily("wsrouter_descriptor_room",
                                "Descriptors left for new sessions before the router refuses them (503).",
                                value=max(guard.limit - guard.reserve - estimate, 0))
