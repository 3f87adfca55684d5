"""Putting a broker between an engine and its hub (the app calls these; docs/decisions.md,
"Broker")."""

from __future__ import annotations

from ..engine.decipher import COUNCIL_ID, IDLE_VISIBLE, Decipher, Retention
from ..engine.runtime import Engine, UnknownSessionError
from ..transport.hub import Hub
from .node import BrokerNode
from .publisher import BrokerPublisher
from .url import BrokerURL


def lit_models(decipher: Decipher) -> frozenset[str]:
    """The models this process's generations light now (and the council, for two or more)."""
    lit = [
        model_id
        for model_id, energy in decipher.energies.items()
        if energy.active_streams > 0 or energy.intensity > IDLE_VISIBLE
    ]
    if len(lit) >= 2:
        lit.append(COUNCIL_ID)
    return frozenset(lit)


class Broker:
    """The node and the publisher of one process, bound to its engine once it exists."""

    def __init__(self, url: BrokerURL, hub: Hub, retention: Retention) -> None:
        self.node = BrokerNode(url, retention)
        self._engine: Engine | None = None
        self.publisher = BrokerPublisher(hub, self.node, self._lit, self._status)

    def _lit(self) -> frozenset[str]:
        return frozenset() if self._engine is None else lit_models(self._engine.decipher)

    def _status(self, session_id: str) -> str | None:
        if self._engine is None:
            return None
        session = self._engine.decipher.sessions.get(session_id)
        return None if session is None else session.status

    def bind(self, engine: Engine) -> None:
        """Resume from the stream's log, number frames like the cluster, count the cluster's
        tokens for rewards, take cancels."""
        self._engine = engine
        node = self.node
        engine.resume_log = node.log
        engine.decipher.tokens_elsewhere = lambda: node.log.tokens_except(node.origin)
        node.reward_seen = engine.decipher.rewards.earned_elsewhere
        node.frame_number = lambda: engine.clock.frame_number
        node.scheduled_frame = engine.clock.scheduled_frame
        node.frame_rate = engine.clock.rate
        node.cancel_local = self._cancel_local

    def joined(self) -> None:
        """Once :meth:`BrokerNode.run` has started: the cluster's instance id and epoch."""
        assert self._engine is not None
        self._engine.instance_id = self.node.cluster_id
        self._engine.clock.epoch_ns = self.node.epoch_ns

    def _cancel_local(self, session_id: str) -> bool:
        engine = self._engine
        if engine is None:
            return False
        try:
            return engine.cancel(session_id).status == "streaming"
        except UnknownSessionError:
            return False
