"""
One route, several targets: which target a session gets, and failover.

A route with a L{Balance} has one L{Balancer}, which keeps that route's
counters: the sessions open on each target, and the targets marked down.
The L{Balancing} object (one per gateway) holds the balancers; nothing is
module-global.

Choosing (L{Balancer.candidates}) is pure: given the policy and the client
it returns the targets to try, in order, leaving out those marked down.
Connecting (L{Balancing.connect}) tries them one after the other: a target
that cannot be connected (refused, timed out: each try is bounded by
C{limits.connect_timeout}) is marked down for C{down_for} seconds (passive
health) and the next one is tried.  When none is left the handshake is
refused with 502 naming every target and why.  A target marked down is
tried again once C{down_for} has passed (or when every target is down,
so a route never stays closed longer than it must).

Reloads: balancers are kept by the route's path, host, subprotocols,
targets and policy.  A reloaded route with the same ones keeps its
balancer (open-session counts and down marks; a new C{down_for} applies
from then on); a changed route gets a fresh one, and sessions still open
on the old one release their counts there, so nothing is miscounted.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsrouter.config import Balance, Route, Target
from wsrouter.interfaces import Link, SessionInfo, TargetError
from wsrouter.resolvers.base import ResolveRequest, token_of

log = Logger(namespace="wsrouter")

Connect = Callable[[SessionInfo], "Deferred[Link]"]


class Balancer:
    """
    The counters and choice of one balanced route.

    @ivar open: sessions open on each target, by index in C{balance.targets}.
    @ivar down_until: for each target marked down, the clock time it is
        tried again.
    """

    def __init__(self, balance: Balance, clock: IReactorTime, rng: random.Random | None = None) -> None:
        self.balance = balance
        self.targets: tuple[Target, ...] = balance.targets
        self.open = [0] * len(self.targets)
        self.down_until: dict[int, float] = {}
        self._clock = clock
        self._rng = rng or random.Random()
        self._next = 0

    def candidates(self, info: SessionInfo) -> list[int]:
        """
        The targets to try for C{info}, best first, as indices: those not
        marked down in the policy's order; all of them (in that order) when
        every one is marked down.
        """
        count = len(self.targets)
        policy = self.balance.policy
        if policy == "round-robin":
            start, self._next = self._next, (self._next + 1) % count
            order = [(start + step) % count for step in range(count)]
        elif policy == "least-connections":
            start, self._next = self._next, (self._next + 1) % count
            order = sorted(range(count), key=lambda index: (self.open[index], (index - start) % count))
        elif policy == "random":
            start = self._rng.randrange(count)
            order = [(start + step) % count for step in range(count)]
        else:
            order = rendezvous_order(sticky_key(policy, info), self.targets)
        now = self._clock.seconds()
        up = [index for index in order if self.down_until.get(index, 0.0) <= now]
        return up or order

    def mark_down(self, index: int, reason: str) -> None:
        """Skip target C{index} for C{down_for} seconds."""
        self.down_until[index] = self._clock.seconds() + self.balance.down_for
        log.warn("target {target} is down for {seconds} s: {reason}",
                 target=self.targets[index].describe(), seconds=self.balance.down_for, reason=reason)

    def connected(self, index: int) -> None:
        """
        A session is open on target C{index} (it answered: it is up).
        Round-robin's next turn is the target after it, so a target that is
        down does not hand its turns to its neighbour.
        """
        self.open[index] += 1
        self.down_until.pop(index, None)
        if self.balance.policy == "round-robin":
            self._next = (index + 1) % len(self.targets)

    def released(self, index: int) -> None:
        self.open[index] = max(0, self.open[index] - 1)

    def state(self) -> list[dict[str, Any]]:
        """Each target's open sessions and whether it is down now (for tests and status pages)."""
        now = self._clock.seconds()
        return [{"target": target.describe(), "open": self.open[index],
                 "down": self.down_until.get(index, 0.0) > now}
                for index, target in enumerate(self.targets)]


def describe_targets(route: Route) -> str:
    """The route's target, or for a balanced route all of them and the policy (start-up log lines)."""
    if route.balance is None:
        return route.target.describe()
    return ", ".join(target.describe() for target in route.balance.targets) + f" ({route.balance.policy})"


def sticky_key(policy: str, info: SessionInfo) -> str:
    """
    What a hash policy hashes: for C{hash-token} the token where the
    resolvers read it (L{wsrouter.resolvers.base.token_of}: C{?token=},
    the C{token} cookie, or the path below a prefix route), else (no
    token, or C{hash-address}) the client address.
    """
    if policy == "hash-token":
        token = token_of(ResolveRequest.of_session(info))
        if token:
            return "token:" + token
    return "address:" + info.peer_host


def rendezvous_order(key: str, targets: tuple[Target, ...]) -> list[int]:
    """
    The targets' indices for C{key}, best first, by rendezvous (highest
    random weight) hashing: each target scores C{hash(key, target)} and the
    highest wins.  A target's score does not depend on the others, so
    adding a target moves only the keys it now wins (about 1/n of them),
    removing one moves only its own keys, and the order of the rest is
    the failover order.  Targets are known by L{Target.describe}.
    """
    scores = [(_hash(key + "\n" + target.describe()), index) for index, target in enumerate(targets)]
    return [index for _, index in sorted(scores, reverse=True)]


def _hash(key: str) -> int:
    """A hash that is the same in every process and run (Python's own str hash is salted)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()[:8], "big")


def _route_key(route: Route, balance: Balance) -> tuple[Any, ...]:
    return (route.path, route.prefix, route.host, route.subprotocols, balance.targets, balance.policy)


class Balancing:
    """
    The balancers of a gateway's routes, and the sessions they counted.

    @param clock: for down marks (a L{twisted.internet.task.Clock} in tests).
    """

    def __init__(self, clock: IReactorTime, rng: random.Random | None = None) -> None:
        self._clock = clock
        self._rng = rng
        self._balancers: dict[tuple[Any, ...], Balancer] = {}
        #: session id -> (its balancer, its target's index), until it ends.
        self._sessions: dict[str, tuple[Balancer, int]] = {}

    def balancer(self, route: Route) -> Balancer | None:
        """The balancer of C{route}, made on first use; C{None} for a route with one target."""
        balance = route.balance
        if balance is None:
            return None
        key = _route_key(route, balance)
        balancer = self._balancers.get(key)
        if balancer is None:
            balancer = self._balancers[key] = Balancer(balance, self._clock, self._rng)
        elif balancer.balance != balance:
            balancer.balance = balance  # a reload changed down_for only
        return balancer

    def forget_routes(self, routes: tuple[Route, ...]) -> None:
        """After a reload: drop the balancers no route in C{routes} uses (open sessions keep theirs)."""
        keep = {_route_key(route, route.balance) for route in routes if route.balance is not None}
        for key in [key for key in self._balancers if key not in keep]:
            del self._balancers[key]

    def connect(self, info: SessionInfo, connect: Connect) -> Deferred[tuple[Link, SessionInfo]]:
        """
        Connect C{info}'s target, or for a balanced route the first of its
        targets that answers.

        @return: fires with the link and the session info naming the target
            chosen, or fails with a L{TargetError} (502 when all are down).
        """
        balancer = self.balancer(info.route)
        if balancer is None:
            return connect(info).addCallback(lambda link: (link, info))
        return _Attempt(self, balancer, info, connect).start()

    def opened(self, session_id: str, balancer: Balancer, index: int) -> None:
        balancer.connected(index)
        self._sessions[session_id] = (balancer, index)

    def ended(self, session_id: str) -> None:
        """The session is over: its target has one session less."""
        counted = self._sessions.pop(session_id, None)
        if counted is not None:
            counted[0].released(counted[1])


class _Attempt:
    """Tries one session's candidates in turn."""

    def __init__(self, balancing: Balancing, balancer: Balancer, info: SessionInfo, connect: Connect) -> None:
        self._balancing = balancing
        self._balancer = balancer
        self._info = info
        self._connect = connect
        self._left = balancer.candidates(info)
        self._problems: list[str] = []
        self._done: Deferred[tuple[Link, SessionInfo]] = Deferred()

    def start(self) -> Deferred[tuple[Link, SessionInfo]]:
        self._try_next()
        return self._done

    def _try_next(self) -> None:
        if not self._left:
            self._done.errback(TargetError("all targets down: " + "; ".join(self._problems), 502))
            return
        index = self._left.pop(0)
        target = self._balancer.targets[index]
        info = attrs.evolve(self._info, route=attrs.evolve(self._info.route, target=target))
        try:
            connecting = self._connect(info)
        except TargetError as e:
            self._failed(Failure(e), index)
            return
        connecting.addCallbacks(self._connected, self._failed, callbackArgs=(index, info), errbackArgs=(index,))

    def _connected(self, link: Link, index: int, info: SessionInfo) -> None:
        self._balancing.opened(info.session_id, self._balancer, index)
        self._done.callback((link, info))

    def _failed(self, reason: Failure, index: int) -> None:
        if not reason.check(TargetError):  # type: ignore[no-untyped-call, unused-ignore]
            self._done.errback(reason)
            return
        error: TargetError = reason.value  # type: ignore[assignment]
        if error.status != 502:
            self._done.errback(reason)  # not the target's fault (a limit): no failover
            return
        self._problems.append(error.reason)
        self._balancer.mark_down(index, error.reason)
        self._try_next()
