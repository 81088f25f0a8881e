"""Answer quality for the simulated engine: which answers are right, and how sure the
model sounds (its token logprobs). Pure functions, deterministic.

The model is item response theory's, the one benchmarks of LLM routers reduce to:

- every prompt has a **difficulty** ``d`` (read from a dataset file of prompts, or
  derived from the prompt's text: a normal draw with standard deviation
  ``DIFFICULTY_STD`` seeded by its hash) and a gold answer (a number below 10,000);
- every deployment has a **skill** ``s``, set through the accuracy it reaches on
  prompts of the default difficulty spread (``--accuracy``: ``skill_for_accuracy``);
- it answers correctly with probability ``sigmoid(s - d)``, decided by a hash of the
  prompt and the deployment's seed, so one deployment answers one prompt the same way
  every time (a temperature-0 model);
- its confidence is ``sigmoid(logit(p) ± separation + noise)`` (plus for a correct
  answer, minus for a wrong one), and every generated token's logprob scatters around
  its log: the mean token logprob is a confidence signal correlated with correctness,
  as with real models, blurred by ``--confidence-noise``.

An answer ends with ``Ans: <four digits>.`` (three tokens); a completion cut by
``max_tokens`` before it carries no answer at all. :func:`score` reads it back.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

DIFFICULTY_STD = 1.5  # spread of derived difficulties (logit units)
SEPARATION = 1.0  # how far a right and a wrong answer's confidence move apart (logit units)
TOKEN_NOISE = 0.3  # per-token scatter of logprobs around the answer's confidence
ANSWER_TOKENS = 3  # " Ans:", " 1234", "."
_NORMAL = NormalDist()
_ANSWER_RE = re.compile(r"Ans: (\d{4})\.\s*$")


def _unit(*parts: object) -> float:
    """A uniform number in (0, 1) from a hash of ``parts``."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return (int.from_bytes(digest[:8], "big") + 0.5) / 2**64


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _logit(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


@dataclass(frozen=True)
class Item:
    """One prompt's difficulty and gold answer."""

    difficulty: float
    answer: int


def derived_item(prompt: str) -> Item:
    """The difficulty and gold answer of a prompt that no dataset lists."""
    return Item(DIFFICULTY_STD * _NORMAL.inv_cdf(_unit("difficulty", prompt)),
                int(_unit("answer", prompt) * 10_000))


def load_dataset(path: str | Path) -> dict[str, Item]:
    """A JSON Lines file of ``{"prompt": str, "answer": int, "difficulty": float}``;
    errors name the line and the field."""
    items: dict[str, Item] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{where}: not JSON ({exc})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise ValueError(f"{where}: needs a string \"prompt\"")
        answer, difficulty = row.get("answer"), row.get("difficulty", 0.0)
        if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < 10_000:
            raise ValueError(f"{where}: \"answer\" must be an integer within 0..9999")
        if not isinstance(difficulty, (int, float)) or isinstance(difficulty, bool) or not math.isfinite(difficulty):
            raise ValueError(f"{where}: \"difficulty\" must be a finite number (logit units)")
        items[row["prompt"]] = Item(float(difficulty), answer)
    return items


def expected_accuracy(skill: float, std: float = DIFFICULTY_STD, points: int = 200) -> float:
    """Mean of sigmoid(skill - d) over d ~ Normal(0, std) (midpoint rule on quantiles)."""
    return sum(_sigmoid(skill - std * _NORMAL.inv_cdf((i + 0.5) / points)) for i in range(points)) / points


def skill_for_accuracy(accuracy: float) -> float:
    """The skill that answers ``accuracy`` of derived-difficulty prompts correctly."""
    if not 0 < accuracy < 1:
        raise ValueError(f"accuracy must be within (0, 1), not {accuracy}")
    low, high = -20.0, 20.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if expected_accuracy(mid) < accuracy else (low, mid)
    return (low + high) / 2


@dataclass(frozen=True)
class Answer:
    correct: bool
    text_tokens: tuple[str, ...]  # the answer's tokens: " Ans:", " 0042", "."
    confidence: float  # what the model's token probabilities average around


@dataclass(frozen=True)
class QualityModel:
    """How well one deployment answers (``--accuracy``, ``--confidence-noise``)."""

    accuracy: float
    confidence_noise: float = 1.5
    seed: str = ""  # one deployment's answers differ from another's of the same accuracy
    dataset: Mapping[str, Item] | None = None
    skill: float = field(init=False)

    def __post_init__(self) -> None:
        if not 0 < self.accuracy < 1:
            raise ValueError(f"--accuracy must be within (0, 1), got {self.accuracy}")
        if not (self.confidence_noise >= 0 and math.isfinite(self.confidence_noise)):
            raise ValueError(f"--confidence-noise must be a finite number >= 0, got {self.confidence_noise}")
        object.__setattr__(self, "skill", skill_for_accuracy(self.accuracy))

    def item(self, prompt: str) -> Item:
        listed = self.dataset.get(prompt) if self.dataset else None
        return listed or derived_item(prompt)

    def answer(self, prompt: str) -> Answer:
        item = self.item(prompt)
        p = _sigmoid(self.skill - item.difficulty)
        correct = _unit("correct", self.seed, self.accuracy, prompt) < p
        value = item.answer if correct else (item.answer + 1 + int(_unit("wrong", self.seed, prompt) * 9_998)) % 10_000
        noise = self.confidence_noise * _NORMAL.inv_cdf(_unit("noise", self.seed, self.accuracy, prompt))
        confidence = _sigmoid(_logit(p) + (SEPARATION if correct else -SEPARATION) + noise)
        return Answer(correct, (" Ans:", f" {value:04d}", "."), confidence)

    def token_logprob(self, prompt: str, answer: Answer, index: int) -> float:
        """The logprob of generated token ``index``: scattered around the answer's confidence."""
        jitter = TOKEN_NOISE * _NORMAL.inv_cdf(_unit("token", self.seed, prompt, index))
        return math.log(_sigmoid(_logit(answer.confidence) + jitter))


def score(text: str, prompt: str, dataset: Mapping[str, Item] | None = None) -> bool:
    """Whether a completion's final answer is the prompt's gold answer."""
    match = _ANSWER_RE.search(text or "")
    if match is None:
        return False
    listed = dataset.get(prompt) if dataset else None
    return int(match.group(1)) == (listed or derived_item(prompt)).answer


def mean_logprob(logprobs: list[float]) -> float | None:
    return sum(logprobs) / len(logprobs) if logprobs else None
