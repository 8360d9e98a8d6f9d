"""The twistd plugin: `twistd -n wsrouter --help`."""

from twisted.application.service import ServiceMaker

wsrouter = ServiceMaker(
    "wsrouter",
    "wsrouter.cli.tap",
    "A programmable WebSocket router: WebSocket clients to TCP, UDP, Unix sockets and programs.",
    "wsrouter",
)
