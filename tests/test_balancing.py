"""
Tests for L{wsrouter.balancing} on a driven clock and a connector whose
answers the test decides: each policy's order, stickiness, failover with
down marks, recovery after C{down_for}, all down, counting and reloads.
"""

from __future__ import annotations

import collections
import random
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from wsrouter.balancing import Balancer, Balancing, rendezvous_order, sticky_key
from wsrouter.config import Balance, Route, TcpTarget
from wsrouter.interfaces import Link, SessionInfo, TargetError

TARGETS = tuple(TcpTarget("127.0.0.1", port) for port in (5901, 5902, 5903))


def route(policy: str = "round-robin", down_for: float = 10.0, targets: tuple[TcpTarget, ...] = TARGETS) -> Route:
    return Route("/vnc", targets[0], balance=Balance(targets, policy, down_for))


def info(the_route: Route, peer: str = "10.0.0.1", query: str = "", number: int = 0) -> SessionInfo:
    return SessionInfo(session_id=f"s{number}", peer_host=peer, peer_port=1234, server_name="", server_port=80,
                       secure=False, path="/vnc", route_path="/vnc", query=query, headers=(), subprotocol=None,
                       route=the_route)


class Connector:
    """Connects to any port not in C{refusing}; records every try."""

    def __init__(self, refusing: set[int] | None = None) -> None:
        self.refusing = refusing or set()
        self.tries: list[int] = []

    def __call__(self, session: SessionInfo) -> Deferred[Link]:
        port = session.route.target.port  # type: ignore[union-attr]
        self.tries.append(port)
        if port in self.refusing:
            return fail(TargetError(f"cannot connect to {port}: connection refused", 502))
        return succeed(f"link to {port}")  # type: ignore[arg-type]


def chosen(balancing: Balancing, session: SessionInfo, connector: Connector) -> Any:
    """The port the session was connected to, or the failure."""
    results: list[Any] = []
    balancing.connect(session, connector).addCallbacks(
        lambda pair: results.append(pair[1].route.target.port), results.append)
    return results[0]


def test_round_robin_takes_turns() -> None:
    """Round-robin hands out the targets in turn."""
    balancing, the_route, connector = Balancing(Clock()), route(), Connector()
    ports = [chosen(balancing, info(the_route, number=n), connector) for n in range(6)]
    assert ports == [5901, 5902, 5903, 5901, 5902, 5903]


def test_least_connections_prefers_the_emptiest_target() -> None:
    """Least-connections picks the target with the fewest open sessions; ended sessions count no more."""
    balancing, the_route, connector = Balancing(Clock()), route("least-connections"), Connector()
    first = [chosen(balancing, info(the_route, number=n), connector) for n in range(3)]
    assert sorted(first) == [5901, 5902, 5903]
    balancing.ended("s1")  # one session ends on the second target
    assert chosen(balancing, info(the_route, number=3), connector) == first[1]
    balancing.ended("s0")
    balancing.ended("s2")
    assert chosen(balancing, info(the_route, number=4), connector) != first[1]
    state = balancing.balancer(the_route).state()  # type: ignore[union-attr]
    assert sorted(target["open"] for target in state) == [0, 1, 1]


def test_random_spreads_over_every_target() -> None:
    """Random choice (seeded) reaches every target, roughly evenly."""
    balancing = Balancing(Clock(), random.Random(7))
    the_route, connector = route("random"), Connector()
    counts = collections.Counter(chosen(balancing, info(the_route, number=n), connector) for n in range(300))
    assert set(counts) == {5901, 5902, 5903}
    assert min(counts.values()) > 60


def test_hash_address_is_sticky_and_spreads() -> None:
    """Hash-address sends one client address always to the same target, and many addresses to all of them."""
    balancing, the_route, connector = Balancing(Clock()), route("hash-address"), Connector()
    again = {chosen(balancing, info(the_route, peer="192.0.2.7", number=n), connector) for n in range(10)}
    assert len(again) == 1
    spread = {chosen(balancing, info(the_route, peer=f"192.0.2.{n}"), connector) for n in range(40)}
    assert spread == {5901, 5902, 5903}


def test_hash_token_follows_the_token_not_the_address() -> None:
    """Hash-token keeps one ?token= on one target whatever the address; without a token the address decides."""
    balancing, the_route, connector = Balancing(Clock()), route("hash-token"), Connector()
    same = {chosen(balancing, info(the_route, peer=f"192.0.2.{n}", query="token=abc&x=1"), connector)
            for n in range(20)}
    assert len(same) == 1
    tokens = {chosen(balancing, info(the_route, query=f"token=t{n}"), connector) for n in range(40)}
    assert tokens == {5901, 5902, 5903}
    assert sticky_key("hash-token", info(the_route, peer="192.0.2.1")) == "address:192.0.2.1"


def test_hash_token_reads_the_token_where_the_resolvers_do() -> None:
    """Hash-token takes the token from ?token=, else the token cookie, else the path below a prefix route."""
    prefix = attrs.evolve(route("hash-token"), path="/vnc", prefix=True)
    base = info(prefix, query="x=1")
    from_path = attrs.evolve(base, path="/vnc/pathtok", route_path="/vnc/pathtok")
    from_cookie = attrs.evolve(from_path, headers=(("cookie", "a=b; token=cookietok"),))
    from_query = attrs.evolve(from_cookie, query="token=querytok")
    assert sticky_key("hash-token", from_path) == "token:pathtok"
    assert sticky_key("hash-token", from_cookie) == "token:cookietok"
    assert sticky_key("hash-token", from_query) == "token:querytok"
    assert sticky_key("hash-token", base) == "address:10.0.0.1"
    assert sticky_key("hash-address", from_query) == "address:10.0.0.1"


def test_hash_token_sends_one_path_token_to_one_target_from_any_address() -> None:
    """A /vnc/TOKEN path token is sticky across client addresses, and many tokens reach every target."""
    the_route = attrs.evolve(route("hash-token"), path="/vnc", prefix=True)
    balancing, connector = Balancing(Clock()), Connector()

    def at(token: str, peer: str = "10.0.0.1") -> SessionInfo:
        return attrs.evolve(info(the_route, peer=peer), path=f"/vnc/{token}", route_path=f"/vnc/{token}")

    assert len({chosen(balancing, at("abc", peer=f"192.0.2.{n}"), connector) for n in range(20)}) == 1
    assert {chosen(balancing, at(f"t{n}"), connector) for n in range(40)} == {5901, 5902, 5903}


def test_hash_is_consistent_adding_a_target_moves_only_the_keys_it_wins() -> None:
    """Rendezvous hashing: a fourth target takes about a quarter of 2000 keys and no key moves between old targets."""
    four = (*TARGETS, TcpTarget("127.0.0.1", 5904))
    keys = [f"token:t{n}" for n in range(2000)]
    before = [TARGETS[rendezvous_order(key, TARGETS)[0]].port for key in keys]
    after = [four[rendezvous_order(key, four)[0]].port for key in keys]
    moved = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert all(new == 5904 for _, new in moved)
    assert 2000 * 0.18 < len(moved) < 2000 * 0.32
    assert collections.Counter(before).keys() == {5901, 5902, 5903}
    assert min(collections.Counter(before).values()) > 2000 / 3 * 0.8


def test_hash_failover_order_keeps_the_other_keys_in_place() -> None:
    """A key whose first target is down goes to its second choice; keys whose first choice is up do not move."""
    clock = Clock()
    balancer = Balancer(Balance(TARGETS, "hash-address", 30.0), clock)
    infos = [info(route("hash-address"), peer=f"198.51.100.{n}") for n in range(60)]
    first = [balancer.candidates(one)[0] for one in infos]
    balancer.mark_down(0, "test")
    again = [balancer.candidates(one)[0] for one in infos]
    for was, now, one in zip(first, again, infos, strict=True):
        if was != 0:
            assert now == was
        else:
            assert now == rendezvous_order(sticky_key("hash-address", one), TARGETS)[1]


def test_refusing_target_is_skipped_marked_down_and_tried_again_after_down_for() -> None:
    """A refusing target fails over to the next, is skipped for down_for seconds, then tried again."""
    clock = Clock()
    balancing, the_route = Balancing(clock), route(down_for=30)
    connector = Connector(refusing={5901})
    assert chosen(balancing, info(the_route, number=0), connector) == 5902
    assert connector.tries == [5901, 5902]
    connector.tries.clear()
    ports = [chosen(balancing, info(the_route, number=n), connector) for n in range(1, 5)]
    assert 5901 not in connector.tries and set(ports) == {5902, 5903}
    connector.refusing.clear()
    clock.advance(29.9)
    connector.tries.clear()
    [chosen(balancing, info(the_route, number=n), connector) for n in range(5, 8)]
    assert 5901 not in connector.tries
    clock.advance(0.2)
    assert 5901 in [chosen(balancing, info(the_route, number=n), connector) for n in range(8, 11)]


def test_all_targets_down_is_a_502_naming_each() -> None:
    """When no target answers the session fails with a 502 TargetError giving every target's reason."""
    balancing, the_route = Balancing(Clock()), route()
    failure = chosen(balancing, info(the_route), Connector(refusing={5901, 5902, 5903}))
    assert failure.check(TargetError)
    assert failure.value.status == 502
    assert "all targets down" in failure.value.reason
    for port in (5901, 5902, 5903):
        assert f"cannot connect to {port}" in failure.value.reason


def test_when_all_are_marked_down_they_are_still_tried() -> None:
    """A route whose targets are all marked down tries them anyway, so it is never closed longer than needed."""
    balancing, the_route = Balancing(Clock()), route()
    connector = Connector(refusing={5901, 5902, 5903})
    chosen(balancing, info(the_route), connector)
    connector.refusing = {5901, 5903}
    assert chosen(balancing, info(the_route, number=1), connector) == 5902


def test_a_non_502_error_does_not_fail_over() -> None:
    """An error that is not the target's (a 503 limit) is passed on at once, nothing marked down."""
    balancing, the_route = Balancing(Clock()), route()
    tries: list[int] = []

    def limited(session: SessionInfo) -> Deferred[Link]:
        tries.append(session.route.target.port)  # type: ignore[union-attr]
        return fail(TargetError("too many commands", 503))

    failure = chosen(balancing, info(the_route), limited)  # type: ignore[arg-type]
    assert failure.value.status == 503 and tries == [5901]
    assert not any(target["down"] for target in balancing.balancer(the_route).state())  # type: ignore[union-attr]


def test_reload_keeps_counts_for_an_unchanged_route_and_starts_afresh_for_a_changed_one() -> None:
    """A reload keeps an unchanged route's balancer (counts, new down_for); changed targets get a new one."""
    balancing, connector = Balancing(Clock()), Connector()
    old = route("least-connections")
    chosen(balancing, info(old, number=0), connector)
    old_balancer = balancing.balancer(old)
    longer = attrs.evolve(old, balance=attrs.evolve(old.balance, down_for=99.0))
    balancing.forget_routes((longer,))
    assert balancing.balancer(longer) is old_balancer and old_balancer.balance.down_for == 99.0  # type: ignore[union-attr]
    changed = route("least-connections", targets=TARGETS[:2])
    balancing.forget_routes((changed,))
    fresh = balancing.balancer(changed)
    assert fresh is not old_balancer and fresh.open == [0, 0]  # type: ignore[union-attr]
    balancing.ended("s0")
    assert old_balancer.open == [0, 0, 0]  # type: ignore[union-attr]


def test_single_target_routes_pass_straight_through() -> None:
    """A route without balance is connected as it is, with nothing counted."""
    balancing, connector = Balancing(Clock()), Connector()
    plain = Route("/one", TARGETS[0])
    assert chosen(balancing, info(plain), connector) == 5901
    assert balancing.balancer(plain) is None


@pytest.mark.parametrize("policy", ["round-robin", "least-connections", "random", "hash-address", "hash-token"])
def test_candidates_list_every_target_once(policy: str) -> None:
    """Whatever the policy, the failover order names each target exactly once."""
    balancer = Balancer(route(policy).balance, Clock(), random.Random(1))  # type: ignore[arg-type]
    for n in range(10):
        assert sorted(balancer.candidates(info(route(policy), peer=f"198.51.100.{n}"))) == [0, 1, 2]


def test_round_robin_shares_a_down_targets_turns_evenly() -> None:
    """With one target marked down, round-robin alternates between the others instead of doubling one."""
    balancing, the_route = Balancing(Clock()), route()
    connector = Connector(refusing={5901})
    ports = [chosen(balancing, info(the_route, number=n), connector) for n in range(7)]
    assert ports == [5902, 5903, 5902, 5903, 5902, 5903, 5902]


def test_describe_targets_names_every_target_and_the_policy() -> None:
    """The start-up line of a balanced route names all its targets and its policy; a plain route its target."""
    from wsrouter.balancing import describe_targets
    two = route("random", targets=TARGETS[:2])
    assert describe_targets(two) == "tcp://127.0.0.1:5901, tcp://127.0.0.1:5902 (random)"
    assert describe_targets(Route("/one", TARGETS[0])) == "tcp://127.0.0.1:5901"
