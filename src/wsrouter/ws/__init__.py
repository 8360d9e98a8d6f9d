"""The Autobahn adapter and the WebSocket wire: frame parser, writes, keepalive, closing."""
