"""The demo model: deterministic text, rhythm and probabilities, and a faithful stream."""

from __future__ import annotations

import itertools
import logging
import statistics

import pytest
import trio
import trio.testing

from wirthforge_trio.engine.energy import certainty
from wirthforge_trio.sources.base import ModelSource, Token
from wirthforge_trio.sources.demo import CORPUS, DemoSource

PROMPTS = [
    "What is energy?",
    "Tell me about light.",
    "How do local models work?",
    "hello",
    "Explain tokens per second in one paragraph, please.",
    "light",
    "energy",
    "the model",
    "Sunlight",
    "Why does my laptop get warm when it runs a model?",
]


def test_is_a_model_source_named_demo() -> None:
    source: ModelSource = DemoSource()
    assert source.name == "demo"


def test_rejects_non_positive_speed() -> None:
    with pytest.raises(ValueError):
        DemoSource(speed=0.0)


def test_corpus_is_a_few_hundred_words_of_sentences() -> None:
    assert 35 <= len(CORPUS) <= 45
    assert len(set(CORPUS)) == len(CORPUS)
    assert all(s[0].isupper() and s.endswith(".") for s in CORPUS)
    assert 300 <= sum(len(s.split()) for s in CORPUS) <= 900


def test_same_seed_and_prompt_repeat_exactly() -> None:
    a, b = DemoSource(seed=7), DemoSource(seed=7, speed=3.0)
    for prompt in PROMPTS:
        assert a.text_for(prompt) == b.text_for(prompt)
        assert a.tokens_for(prompt) == b.tokens_for(prompt)
        assert a.schedule_for(prompt) == b.schedule_for(prompt)
        assert a.top_k_for(prompt) == b.top_k_for(prompt)


def test_seeds_and_prompts_change_the_answer() -> None:
    prompt = PROMPTS[0]
    texts = {DemoSource(seed=s).text_for(prompt) for s in range(5)}
    assert len(texts) > 1
    assert DemoSource(seed=0).schedule_for(prompt) != DemoSource(seed=1).schedule_for(prompt)
    assert DemoSource(seed=0).top_k_for(prompt) != DemoSource(seed=1).top_k_for(prompt)
    assert len({DemoSource().text_for(p) for p in PROMPTS}) > 1


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_answer_shape(seed: int) -> None:
    source = DemoSource(seed=seed)
    for prompt in PROMPTS:
        text = source.text_for(prompt)
        sentences = [s for s in CORPUS if s in text]
        assert 3 <= len(sentences) <= 5
        assert len(" ".join(sentences)) == len(text)
        assert 50 <= len(source.tokens_for(prompt)) <= 110


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_tokens_join_to_the_text_like_bpe(seed: int) -> None:
    source = DemoSource(seed=seed)
    for prompt in PROMPTS:
        tokens = source.tokens_for(prompt)
        assert "".join(tokens) == source.text_for(prompt)
        assert all(tokens)
        assert not tokens[0].startswith(" ")
        for previous, token in itertools.pairwise(tokens):
            core = token.removeprefix(" ")
            assert core and " " not in core
            # Punctuation is a token of its own; a word keeps its leading space unless it
            # is glued to punctuation, as in "warm-up".
            assert core.isalnum() or len(core) == 1 or core.startswith("'")
            if core[0].isalnum() and not token.startswith(" "):
                assert not previous[-1].isalnum()


@pytest.mark.parametrize("seed", [0, 3])
def test_answer_never_contains_the_prompt(seed: int) -> None:
    source = DemoSource(seed=seed)
    # ``spanning`` prompts cross a sentence boundary: only a whole answer could quote them.
    spanning = [f"{a[-12:]} {b[:12]}" for a in CORPUS[:3] for b in CORPUS[:3] if a != b]
    for prompt in [*PROMPTS, "sunlight delivers", "computation is no exception", *spanning]:
        assert prompt.strip().casefold() not in source.text_for(prompt).casefold()


def test_schedule_has_bursts_and_stalls() -> None:
    source = DemoSource()
    stalls = 0
    for prompt in PROMPTS[:4]:
        delays = source.schedule_for(prompt)
        assert len(delays) == len(source.tokens_for(prompt))
        assert 0.15 <= delays[0] <= 0.6
        gaps = delays[1:]
        assert 0.025 <= statistics.median(gaps) <= 0.040
        assert all(0.025 <= d <= 0.9 for d in gaps)
        stalls += sum(d > 0.4 for d in gaps)
    assert stalls >= 1


def test_top_k_is_a_sorted_top5_with_varying_certainty() -> None:
    source = DemoSource()
    prompt = PROMPTS[2]
    tokens = source.tokens_for(prompt)
    dists = source.top_k_for(prompt)
    assert len(dists) == len(tokens)
    for dist in dists:
        assert len(dist) == 5
        assert sum(dist) == pytest.approx(1.0)
        assert list(dist) == sorted(dist, reverse=True)
    punct = [certainty(d) for t, d in zip(tokens, dists, strict=True) if not t.strip().isalnum()]
    long_words = [certainty(d) for t, d in zip(tokens, dists, strict=True) if len(t.strip()) >= 8]
    assert punct and long_words
    assert min(punct) > max(long_words)


async def collect(source: DemoSource, prompt: str) -> tuple[float, list[Token]]:
    start = trio.current_time()
    return start, [token async for token in source.generate(prompt)]


@pytest.mark.parametrize("speed", [1.0, 2.5])
async def test_generate_streams_the_schedule(
    autojump_clock: trio.testing.MockClock, speed: float
) -> None:
    source = DemoSource(seed=5, speed=speed)
    prompt = PROMPTS[1]
    start, tokens = await collect(source, prompt)
    assert [t.text for t in tokens] == source.tokens_for(prompt)
    assert [t.top_k for t in tokens] == source.top_k_for(prompt)
    times = [start] + [t.at for t in tokens]
    measured = [b - a for a, b in itertools.pairwise(times)]
    expected = [d / speed for d in source.schedule_for(prompt)]
    assert measured == pytest.approx(expected, abs=1e-9)


async def test_generate_never_reveals_the_prompt(
    autojump_clock: trio.testing.MockClock,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    prompt = "my secret prompt about zebras"
    source = DemoSource()
    _, tokens = await collect(source, prompt)
    assert "zebras" not in "".join(t.text for t in tokens)
    out, err = capsys.readouterr()
    assert "zebras" not in out + err
    assert all("zebras" not in r.getMessage() for r in caplog.records)
    assert "zebras" not in repr(source)
