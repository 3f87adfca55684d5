"""Several processes, one stream: the Redis broker (docs/decisions.md, "Broker").

Imported only when a broker is configured: it needs the ``broker`` extra (coredis).
"""

from .url import BrokerURL, BrokerURLError, parse_broker_url

__all__ = ["BrokerURL", "BrokerURLError", "parse_broker_url"]
