"""Model sources: the built-in demo, Ollama, and any OpenAI-compatible server.

A model is named on the command line as ``demo``, ``demo:NAME``, ``ollama:NAME`` or
``openai:NAME``; :func:`make_source` turns such a spec into a source.
"""

from __future__ import annotations

from typing import Final

from .base import ModelSource

SOURCE_KINDS: Final = ("demo", "ollama", "openai")


class ModelSpecError(ValueError):
    """A model spec that names no known runtime or no model."""


def parse_model_spec(spec: str) -> tuple[str, str]:
    """``"ollama:qwen3:0.6b"`` → ``("ollama", "qwen3:0.6b")``; ``"demo"`` → ``("demo", "demo")``."""
    spec = spec.strip()
    if spec == "demo":
        return "demo", "demo"
    kind, sep, name = spec.partition(":")
    if not sep or kind not in SOURCE_KINDS or not name.strip():
        raise ModelSpecError(
            f"unknown model {spec!r}: use demo, demo:NAME, ollama:NAME or openai:NAME "
            "(e.g. --model ollama:qwen3:0.6b)"
        )
    return kind, (spec if kind == "demo" else name.strip())


def make_source(
    spec: str,
    *,
    ollama_url: str,
    openai_url: str,
    openai_api_key: str | None = None,
    demo_seed: int = 0,
    demo_speed: float = 1.0,
) -> ModelSource:
    """The source a spec names (runtime sources are imported only when used)."""
    kind, name = parse_model_spec(spec)
    if kind == "demo":
        from .demo import DemoSource

        return DemoSource(seed=demo_seed, speed=demo_speed, name=name)
    if kind == "ollama":
        from .ollama import OllamaSource

        return OllamaSource(name, ollama_url)
    from .openai import OpenAISource

    return OpenAISource(name, openai_url, api_key=openai_api_key)
