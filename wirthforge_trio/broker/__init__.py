"""Several processes, one stream: the Redis broker (docs/decisions.md, "Broker").

Importing the package loads only the address check (``url.py``); the rest needs the
``broker`` extra (coredis) and is imported by the app only when a broker is configured.
"""

from .url import BrokerURL, BrokerURLError, parse_broker_url

__all__ = ["BrokerURL", "BrokerURLError", "parse_broker_url"]
