"""Mount wsrouter under /ws/ of your own twisted.web Site (run: python examples/embed.py PORT)."""
import sys

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from wsrouter import build_config, build_resource

root = Resource()
root.putChild(b"", Data(b"<h1>my app</h1>", "text/html"))
root.putChild(b"ws", build_resource(build_config({"routes": [{"path": "/echo", "target": "echo:"}]}), reactor))
reactor.listenTCP(int(sys.argv[1]) if len(sys.argv) > 1 else 8000, Site(root), interface="127.0.0.1")
reactor.run()
