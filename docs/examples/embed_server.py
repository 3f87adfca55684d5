"""Run wirthforge-trio inside your own Trio program, with a model source of your own.

    python docs/examples/embed_server.py

It starts the server on a free loopback port, adds a model ("echo") beside the built-in
demo, listens on the WebSocket like a browser would, starts a generation, publishes an
event of its own, and shuts everything down by leaving the `async with` block (connected
clients get close code 1001).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import trio
from trio_websocket import open_websocket_url

import wirthforge_trio
from wirthforge_trio.contract.events import RewardEvent, RewardPayload
from wirthforge_trio.sources.base import Token


class EchoModel:
    """The smallest model source: a name, a kind, a token stream, and three lifecycle hooks."""

    name = "echo"
    kind = "custom"

    async def generate(self, prompt: str) -> AsyncIterator[Token]:
        for piece in ["Hello", " from", " a", " model", " of", " my", " own."]:
            await trio.sleep(0.05)  # a real source would await its runtime here
            yield Token(text=piece, at=trio.current_time())

    async def check(self) -> None:
        """Raise SourceError when the model cannot be used; this one always can."""

    async def preload(self) -> None:
        """Load the model ahead of the first prompt, if that means anything for it."""

    async def aclose(self) -> None:
        """Release connections when the server stops."""


async def main() -> None:
    settings = wirthforge_trio.Settings(port=0, log_level="WARNING")
    async with wirthforge_trio.running(settings, sources=[EchoModel()]) as server:
        print(f"serving {server.ws_url} with models {', '.join(server.engine.models)}")
        async with open_websocket_url(server.ws_url) as ws:
            hello = json.loads(await ws.get_message())
            print(f"handshake: {hello['type']} (capabilities {hello['payload']['capabilities']})")
            (session,) = server.submit("say hello", ["echo"])
            server.publish(
                RewardEvent(
                    timestamp=0,
                    payload=RewardPayload(
                        reward_type="feedback", title="Embedded and running", points=1
                    ),
                )
            )
            text: list[str] = []
            while True:
                message = json.loads(await ws.get_message())
                if message["type"] == "reward_event":
                    print(f"reward: {message['payload']['title']}")
                if message["type"] == "token_stream":
                    text.extend(message["payload"]["tokens"])
                    if message["payload"]["isComplete"]:
                        break
            print(f"{session.model_id} said: {''.join(text)}")
    print("stopped")


if __name__ == "__main__":
    trio.run(main)
