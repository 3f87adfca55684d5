"""wirthforge-trio: WIRTHFORGE's real-time WebSocket protocol and server (WF-TECH-003) on Trio."""

__version__ = "0.1.0"
