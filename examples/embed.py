"""
Mount wsrouter under /ws/ of your own twisted.web Site, with a handler and
a resolver written in Python (run: python examples/embed.py PORT [HOST:PORT]).

/ws/echo is an echo:; /ws/upper a python: handler; /ws/room?room=NAME a
route whose target a Python resolver picks (room "echo", or "backend": the
HOST:PORT given). On SIGTERM or Ctrl-C the sessions get 1001, then the
handler's on_shutdown runs.
"""
import sys

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from wsrouter import build_config, build_resource
from wsrouter.config import EchoTarget, PythonTarget, parse_target
from wsrouter.resolvers import Refuse


class Upper:
    """A handler (docs/handlers.md): each text message back in upper case."""

    def __init__(self, context):
        self.context = context

    def on_message(self, session, payload, is_binary):
        session.send(payload.decode("utf-8", "replace").upper())

    def on_shutdown(self):
        print("upper: shut down", flush=True)


class Rooms:
    """A resolver (docs/resolvers.md): ?room=NAME picks the target; any other name is a 404."""

    def __init__(self, backend):
        self.rooms = {"echo": EchoTarget()}
        if backend:
            self.rooms["backend"] = parse_target(backend)

    def resolve(self, request):
        return self.rooms.get(request.query_value("room") or "") or Refuse(404, "no such room")


config = build_config({
    "routes": [{"path": "/echo", "target": "echo:"},
               {"path": "/upper", "target": PythonTarget(factory=Upper)},
               {"path": "/room", "target": "resolve:rooms"}],
    "resolvers": {"rooms": {"plugin": Rooms(sys.argv[2] if len(sys.argv) > 2 else None)}},
})
router = build_resource(config, reactor)
root = Resource()
root.putChild(b"", Data(b"<h1>my app</h1>", "text/html"))
root.putChild(b"ws", router)
reactor.addSystemEventTrigger("before", "shutdown", router.gateway.shutdown)
reactor.listenTCP(int(sys.argv[1]) if len(sys.argv) > 1 else 8000, Site(root), interface="127.0.0.1")
reactor.run()
