"""The embedded demo model: a seeded, offline stand-in for a real runtime.

It lets WIRTHFORGE run, be shown and be tested with no model installed. Answers are
real English sentences from a small built-in corpus, streamed with a realistic cadence
(a first-token wait, bursts near 30 tokens/s, occasional stalls) and a synthetic top-5
distribution per token, so every part of the energy model gets exercised. Everything is
derived from ``(seed, prompt)`` through SHA-256, so runs repeat exactly across processes.
The prompt is only hashed and compared; it is never stored, logged or printed.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import AsyncIterator

import trio

from wirthforge_trio.sources.base import Token

__all__ = ["CORPUS", "DemoSource"]

CORPUS: tuple[str, ...] = (
    (
        "Light from the Sun needs a little over eight minutes to reach the Earth, so every "
        "sunrise you see is already slightly old news."
    ),
    (
        "A photon carries energy in proportion to its frequency, which is why blue light packs "
        "more punch than red."
    ),
    (
        "When a model runs on your own machine, every token it writes is paid for by your own "
        "hardware and nothing leaves the room."
    ),
    (
        "Local inference trades the convenience of a distant data centre for privacy, low "
        "latency and a clear view of the cost."
    ),
    (
        "A language model does not think in whole paragraphs; it predicts one small piece of "
        "text at a time."
    ),
    (
        "Each token is the result of billions of multiplications and additions flowing through "
        "the layers of the network."
    ),
    (
        "The speed of generation rises and falls like a current, quick on familiar phrases and "
        "slower where the model hesitates."
    ),
    (
        "Energy is never created or destroyed, only moved from one form into another, and "
        "computation is no exception."
    ),
    (
        "Every bit a processor erases must release a tiny amount of heat, a limit first "
        "described by Rolf Landauer."
    ),
    (
        "A graphics card spends much of its power moving numbers between memory and compute "
        "units rather than on the arithmetic itself."
    ),
    (
        "Good visualisation turns invisible work into something you can see, so a stream of "
        "tokens can become a stream of light."
    ),
    (
        "When the model is certain, the next word is obvious; when it is unsure, several "
        "candidates compete for the same place."
    ),
    (
        "Entropy measures that doubt, and a flat spread of choices means the model is weighing "
        "many paths at once."
    ),
    (
        "A short pause in the output often marks the border between two ideas, much like a "
        "breath between sentences."
    ),
    (
        "Running a small model on a laptop shows that useful intelligence does not always need "
        "a warehouse full of servers."
    ),
    (
        "The glow of a filament bulb is mostly wasted heat, while an LED turns far more of its "
        "power into visible light."
    ),
    (
        "Quantisation stores the weights of a model with fewer bits, which saves memory and "
        "lets larger networks fit on ordinary devices."
    ),
    (
        "A steady rhythm of tokens feels calm and confident, while long gaps feel like friction "
        "in the flow of thought."
    ),
    (
        "On a clear day at noon, sunlight delivers roughly one kilowatt to every square metre "
        "of ground."
    ),
    (
        "Plants capture only a few percent of that light, yet it is enough to feed nearly every "
        "food chain on the planet."
    ),
    (
        "The first token of an answer usually takes the longest, because the model must read "
        "the whole prompt before it can begin."
    ),
    (
        "After that warm-up, tokens tend to arrive in bursts, and the pace can climb to dozens "
        "of words each second."
    ),
    (
        "A cache of attention keys and values spares the model from repeating work it has "
        "already done for earlier tokens."
    ),
    (
        "Measuring energy honestly means counting what actually happened on the device, not "
        "guessing from a brochure."
    ),
    (
        "A rainbow appears when sunlight is bent and split by countless raindrops, each one "
        "acting as a tiny prism."
    ),
    (
        "Lasers make light in which every wave marches in step, which is why a beam stays "
        "narrow over great distances."
    ),
    (
        "A processor clock ticks billions of times per second, and each tick is a chance to "
        "move a little information forward."
    ),
    (
        "Keeping data close to the processor is the simplest way to save both time and power "
        "in almost any program."
    ),
    (
        "An answer that streams smoothly gives the reader time to follow along instead of "
        "waiting for a wall of text."
    ),
    (
        "When two models run side by side, their rhythms can be compared the way musicians "
        "compare tempo and phrasing."
    ),
    (
        "Heat is the quiet tax on every calculation, and good engineering is largely the art "
        "of paying less of it."
    ),
    (
        "Optical fibres carry conversations across oceans as pulses of light trapped inside "
        "strands of glass."
    ),
    (
        "A model that runs offline keeps working during a storm, on a train, or anywhere the "
        "network cannot reach."
    ),
    (
        "Small models are not toys: with careful prompts they summarise, translate and explain "
        "with surprising skill."
    ),
    (
        "The colour of a star reveals its temperature, with cool stars glowing red and the "
        "hottest ones burning blue."
    ),
    (
        "Batteries store energy as chemistry and release it as a flow of electrons once a "
        "circuit gives them a path."
    ),
    (
        "A well designed interface shows the cost of computation without turning every answer "
        "into an accounting exercise."
    ),
    (
        "Transparency builds trust, because people can judge for themselves whether a result "
        "was worth the energy it took."
    ),
    (
        "Moonlight is simply sunlight reflected from grey rock, which is why the full Moon looks "
        "bright but never feels warm."
    ),
    (
        "In the end, every answer on the screen began as electricity, became arithmetic, and "
        "returned to us as light."
    ),
    (
        "Solar panels turn sunlight straight into current, and good cells convert about a fifth "
        "of it into electricity."
    ),
    (
        "Tokens per second is a simple measure, yet it says a great deal about how hard the "
        "hardware is working."
    ),
)
"""Sentences the demo answers are drawn from; written for WIRTHFORGE's themes."""

_TOKEN_RE = re.compile(r"'(?:s|t|re|ve|m|ll|d)\b| ?\w+| ?[^\w\s]|\s+")
"""BPE-like split: a word keeps its one leading space, punctuation stands alone."""

_COMMON_WORDS = frozenset(
    {
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "can",
        "each",
        "for",
        "from",
        "has",
        "in",
        "is",
        "it",
        "its",
        "like",
        "more",
        "much",
        "no",
        "not",
        "of",
        "on",
        "one",
        "or",
        "so",
        "than",
        "that",
        "the",
        "their",
        "them",
        "they",
        "this",
        "to",
        "was",
        "we",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "why",
        "with",
        "you",
        "your",
    }
)
"""Words a real model predicts with high confidence in almost any context."""

_SENTENCE_COUNTS = (3, 5)
_TOKEN_RANGE = (50, 110)
_FIRST_TOKEN_S = (0.15, 0.60)
_BURST_S = (0.025, 0.040)
_BURST_BASE_S = (0.028, 0.036)
_BURST_JITTER_S = 0.003
_STALL_S = (0.45, 0.90)
_STALL_P_AFTER_SENTENCE = 0.45
_STALL_P_AFTER_CLAUSE = 0.10
_STALL_P_OTHER = 0.01
_MAX_STALLS = 4
_HICCUP_P = 0.06
_HICCUP_S = (0.05, 0.12)
_TOP_K = 5


def _split(text: str) -> list[str]:
    """Tokenise like a BPE tokenizer would see whole words; lossless by construction."""
    return _TOKEN_RE.findall(text)


class DemoSource:
    """Deterministic demo model: same ``(seed, prompt)`` gives the same answer and rhythm.

    ``speed`` scales only the wall-clock pacing (2.0 streams twice as fast); the schedule
    returned by :meth:`schedule_for` is always the 1x one.
    """

    def __init__(self, seed: int = 0, speed: float = 1.0, name: str = "demo") -> None:
        if not speed > 0:
            raise ValueError("speed must be positive")
        self._name = name
        # Each named demo model ("demo:bravo") answers differently: its name joins the seed.
        self._seed_material = str(seed) if name == "demo" else f"{seed}\0{name}"
        self._seed = seed
        self._speed = speed

    def __repr__(self) -> str:
        return f"DemoSource(seed={self._seed!r}, speed={self._speed!r}, name={self._name!r})"

    @property
    def name(self) -> str:
        """Model name reported to clients: ``demo``, or ``demo:NAME`` for a council of demos."""
        return self._name

    @property
    def kind(self) -> str:
        return "demo"

    async def check(self) -> None:
        """Always ready: the demo model is built in."""

    async def preload(self) -> None:
        """Nothing to load."""

    async def aclose(self) -> None:
        """Nothing to release."""

    @property
    def seed(self) -> int:
        """Seed mixed into every answer, schedule and distribution."""
        return self._seed

    @property
    def speed(self) -> float:
        """Pacing multiplier applied to the schedule when streaming."""
        return self._speed

    def _rng(self, prompt: str, purpose: str) -> random.Random:
        """A generator private to ``(seed, prompt, purpose)``, stable across processes."""
        material = f"wirthforge-demo\0{self._seed_material}\0{purpose}\0{prompt}".encode()
        digest = hashlib.sha256(material).digest()
        return random.Random(int.from_bytes(digest, "big"))

    def text_for(self, prompt: str) -> str:
        """The full answer to ``prompt``: 3-5 corpus sentences that never quote the prompt."""
        rng = self._rng(prompt, "text")
        needle = prompt.strip().casefold()

        def quotes_prompt(text: str) -> bool:
            return bool(needle) and needle in text.casefold()

        pool = [s for s in CORPUS if not quotes_prompt(s)]
        avoidable = bool(pool)
        if not avoidable:
            # Only a prompt that is a fragment of every sentence (a single letter, say)
            # gets here; no English answer can avoid it, so answer from the whole corpus.
            pool = list(CORPUS)

        low, high = _TOKEN_RANGE
        best: str | None = None
        best_miss = 0
        for _ in range(200):
            count = min(len(pool), rng.randint(*_SENTENCE_COUNTS))
            text = " ".join(rng.sample(pool, count))
            if avoidable and quotes_prompt(text):
                continue  # the prompt spans a sentence boundary: draw again
            n = len(_split(text))
            miss = max(low - n, n - high, 0)
            if miss == 0:
                return text
            if best is None or miss < best_miss:
                best, best_miss = text, miss
        assert best is not None  # the loop always records at least one candidate
        return best

    def tokens_for(self, prompt: str) -> list[str]:
        """The answer as tokens; ``"".join(tokens_for(p)) == text_for(p)`` exactly."""
        return _split(self.text_for(prompt))

    def schedule_for(self, prompt: str) -> list[float]:
        """Seconds to wait before each token at 1x speed; one entry per token."""
        tokens = self.tokens_for(prompt)
        rng = self._rng(prompt, "schedule")
        delays: list[float] = []
        stalls = 0
        base = rng.uniform(*_BURST_BASE_S)
        for i, _token in enumerate(tokens):
            if i == 0:
                delays.append(rng.uniform(*_FIRST_TOKEN_S))
                continue
            previous = tokens[i - 1].strip()
            if previous in {".", "!", "?"}:
                stall_p = _STALL_P_AFTER_SENTENCE
                base = rng.uniform(*_BURST_BASE_S)  # each sentence has its own tempo
            elif previous in {",", ";", ":"}:
                stall_p = _STALL_P_AFTER_CLAUSE
            else:
                stall_p = _STALL_P_OTHER
            roll = rng.random()
            if stalls < _MAX_STALLS and roll < stall_p:
                stalls += 1
                delays.append(rng.uniform(*_STALL_S))
            elif roll > 1.0 - _HICCUP_P:
                delays.append(rng.uniform(*_HICCUP_S))
            else:
                delay = base + rng.gauss(0.0, _BURST_JITTER_S)
                delays.append(min(_BURST_S[1], max(_BURST_S[0], delay)))

        if stalls == 0 and len(tokens) > 1:
            # Every answer stalls at least once so the UI always shows some friction;
            # prefer a sentence boundary, where a real model tends to pause.
            boundaries = [
                i for i in range(1, len(tokens)) if tokens[i - 1].strip() in {".", "!", "?"}
            ]
            at = rng.choice(boundaries) if boundaries else rng.randrange(1, len(tokens))
            delays[at] = rng.uniform(*_STALL_S)
        return delays

    def top_k_for(self, prompt: str) -> list[tuple[float, ...]]:
        """A synthetic top-5 distribution per token, most likely first, summing to 1.

        Punctuation and short common words get one dominant candidate; long words get a
        flatter spread, so the certainty term of the energy model moves with the text.
        """
        tokens = self.tokens_for(prompt)
        rng = self._rng(prompt, "top_k")
        result: list[tuple[float, ...]] = []
        for token in tokens:
            word = token.strip()
            if not word or not word[0].isalnum():
                top = rng.uniform(0.85, 0.98)
            elif word.casefold() in _COMMON_WORDS or len(word) <= 3:
                top = rng.uniform(0.70, 0.95)
            else:
                # Longer words are harder to predict: confidence falls with length.
                ceiling = max(0.35, 0.85 - 0.05 * len(word))
                top = rng.uniform(max(0.22, ceiling - 0.25), ceiling)
            weights = [rng.uniform(0.2, 1.0) for _ in range(_TOP_K - 1)]
            scale = (1.0 - top) / sum(weights)
            probs = [top, *(w * scale for w in weights)]
            probs.sort(reverse=True)
            result.append(tuple(probs))
        return result

    async def generate(self, prompt: str, *, max_tokens: int | None = None) -> AsyncIterator[Token]:
        """Stream the answer, sleeping ``delay / speed`` on the Trio clock before each token;
        only its first ``max_tokens`` tokens when that is given."""
        tokens = self.tokens_for(prompt)
        delays = self.schedule_for(prompt)
        distributions = self.top_k_for(prompt)
        steps = list(zip(tokens, delays, distributions, strict=True))
        for text, delay, top_k in steps[:max_tokens]:
            await trio.sleep(delay / self._speed)
            yield Token(text=text, at=trio.current_time(), top_k=top_k)
