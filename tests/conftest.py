import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Client threads (websockets' blocking client) run on Twisted's pool.
    from twisted.internet import reactor

    reactor.suggestThreadPoolSize(32)
