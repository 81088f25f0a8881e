"""Configuration of one simulated model-server replica.

Every knob is a command-line flag of ``llmfleet sim`` (named like vLLM's flag where
vLLM has one), so a ModelDeployment can make one replica play a small fast model and
another a large slow one.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal, cast

OutputLengthKind = Literal["fixed", "uniform", "normal"]
ServeAs = Literal["vllm", "triton"]
SERVE_AS: tuple[ServeAs, ...] = ("vllm", "triton")


@dataclass(frozen=True, slots=True)
class OutputLength:
    """How many tokens a request generates when it does not set ``max_tokens``.

    Written on the command line as ``128``, ``uniform:LOW:HIGH`` (inclusive) or
    ``normal:MEAN:STD`` (rounded, at least one token).
    """

    kind: OutputLengthKind
    a: float
    b: float = 0.0

    @classmethod
    def parse(cls, text: str | int) -> OutputLength:
        """Parse the ``--output-tokens`` syntax; ``ValueError`` names what is wrong."""
        if isinstance(text, int):
            return cls._fixed(text)
        spec = text.strip()
        if ":" not in spec:
            try:
                return cls._fixed(int(spec))
            except ValueError:
                raise ValueError(
                    f"expected an integer, uniform:LOW:HIGH or normal:MEAN:STD, got {text!r}"
                ) from None
        kind, _, rest = spec.partition(":")
        parts = rest.split(":")
        if kind not in ("uniform", "normal") or len(parts) != 2:
            raise ValueError(
                f"expected an integer, uniform:LOW:HIGH or normal:MEAN:STD, got {text!r}"
            )
        try:
            a, b = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f"non-numeric parameter in {text!r}") from None
        if kind == "uniform":
            if not (1 <= a <= b) or a != int(a) or b != int(b):
                raise ValueError(f"uniform needs integers 1 <= LOW <= HIGH, got {text!r}")
        elif a < 1 or b < 0 or not math.isfinite(a + b):
            raise ValueError(f"normal needs MEAN >= 1 and STD >= 0, got {text!r}")
        return cls(cast(OutputLengthKind, kind), a, b)

    @classmethod
    def _fixed(cls, n: int) -> OutputLength:
        if n < 1:
            raise ValueError(f"output length must be at least 1 token, got {n}")
        return cls("fixed", float(n))

    def sample(self, rng: random.Random) -> int:
        """Draw one output length (always >= 1)."""
        if self.kind == "fixed":
            return int(self.a)
        if self.kind == "uniform":
            return rng.randint(int(self.a), int(self.b))
        return max(1, round(rng.gauss(self.a, self.b)))

    def __str__(self) -> str:
        if self.kind == "fixed":
            return str(int(self.a))
        if self.kind == "uniform":
            return f"uniform:{int(self.a)}:{int(self.b)}"
        return f"normal:{self.a:g}:{self.b:g}"



ERROR_STATUSES = (429, 500, 502, 503, 504)  # what --error-rate's failures may answer

@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything one sim replica needs; field names follow the CLI flags.

    Times are *model* times (what a GPU would take); ``time_scale`` converts them to
    wall time, so 0.1 runs ten times faster than real time and 0 never sleeps.
    """

    host: str = "0.0.0.0"
    port: int = 8000
    served_model_names: tuple[str, ...] = ("sim-model",)
    # Which server the sim stands in for: "vllm" (vLLM's metric names and /health), or
    # "triton" (Triton's OpenAI frontend: /health/ready too, and Triton's metric names).
    serve_as: ServeAs = "vllm"
    max_num_seqs: int = 256
    kv_cache_tokens: int = 262_144
    prefill_tokens_per_second: float = 20_000.0
    # vLLM's automatic prefix caching: a prompt's leading blocks already in the KV cache
    # skip prefill. Off by default here (vLLM v1 has it on), so loads sized without it keep
    # their timing.
    enable_prefix_caching: bool = False
    decode_step_ms: float = 10.0
    decode_step_ms_per_seq: float = 0.1
    max_model_len: int = 8192
    output_tokens: OutputLength = OutputLength("fixed", 128.0)
    time_scale: float = 1.0
    load_seconds: float = 0.0
    # Unlike vLLM's --shutdown-timeout (0 by default: SIGTERM aborts), the sim drains by
    # default: it plays a replica configured for graceful scale-down.
    shutdown_timeout: float = 10.0
    error_rate: float = 0.0
    error_status: int = 500
    hang_rate: float = 0.0
    crash_after: int | None = None
    seed: int | None = None
    # Answer quality (sim/quality.py): off unless an accuracy is given.
    accuracy: float | None = None
    confidence_noise: float = 1.5
    prompt_dataset: str | None = None
    # LoRA (vLLM's --enable-lora with VLLM_ALLOW_RUNTIME_LORA_UPDATING): adapters loaded and
    # unloaded at runtime through /v1/load_lora_adapter and /v1/unload_lora_adapter are
    # served under their names; the sim answers for them as for the base model.
    enable_lora: bool = False
    max_loras: int = 4
    max_lora_rank: int = 16

    def __post_init__(self) -> None:
        # Validate here rather than in argparse so in-process users (tests, bench)
        # get the same guarantees the scheduler relies on.
        if not self.served_model_names or any(not n for n in self.served_model_names):
            raise ValueError("--served-model-name needs at least one non-empty name")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be 0..65535, got {self.port}")
        if self.serve_as not in SERVE_AS:
            raise ValueError(f"--serve-as must be one of {', '.join(SERVE_AS)}, got {self.serve_as!r}")
        for flag, value in (
            ("--max-num-seqs", self.max_num_seqs),
            ("--kv-cache-tokens", self.kv_cache_tokens),
            ("--max-model-len", self.max_model_len),
        ):
            if value < 1:
                raise ValueError(f"{flag} must be at least 1, got {value}")
        # One sequence can hold up to max_model_len tokens; if that does not fit in
        # the cache the scheduler could never finish it (vLLM refuses to start too).
        if self.kv_cache_tokens < self.max_model_len:
            raise ValueError(
                f"--kv-cache-tokens ({self.kv_cache_tokens}) must be at least "
                f"--max-model-len ({self.max_model_len})"
            )
        if not self.prefill_tokens_per_second > 0:
            raise ValueError("--prefill-tokens-per-second must be positive")
        durations: tuple[tuple[str, float], ...] = (
            ("--decode-step-ms", self.decode_step_ms),
            ("--decode-step-ms-per-seq", self.decode_step_ms_per_seq),
            ("--time-scale", self.time_scale),
            ("--load-seconds", self.load_seconds),
            ("--shutdown-timeout", self.shutdown_timeout),
        )
        for flag, seconds in durations:
            if not (seconds >= 0 and math.isfinite(seconds)):
                raise ValueError(f"{flag} must be a finite number >= 0, got {seconds}")
        for flag, rate in (("--error-rate", self.error_rate), ("--hang-rate", self.hang_rate)):
            if not 0 <= rate <= 1:
                raise ValueError(f"{flag} must be within 0..1, got {rate}")
        if self.error_status not in ERROR_STATUSES:
            raise ValueError(f"--error-status must be one of {', '.join(map(str, ERROR_STATUSES))}, "
                             f"got {self.error_status}")
        if self.error_rate + self.hang_rate > 1:
            raise ValueError("--error-rate plus --hang-rate must not exceed 1")
        if self.accuracy is not None and not 0 < self.accuracy < 1:
            raise ValueError(f"--accuracy must be within (0, 1), got {self.accuracy}")
        if not (self.confidence_noise >= 0 and math.isfinite(self.confidence_noise)):
            raise ValueError(f"--confidence-noise must be a finite number >= 0, got {self.confidence_noise}")
        if self.prompt_dataset is not None and self.accuracy is None:
            raise ValueError("--prompt-dataset needs --accuracy (answer quality is off without it)")
        if self.crash_after is not None and self.crash_after < 1:
            raise ValueError(f"--crash-after must be at least 1, got {self.crash_after}")

    @property
    def model_name(self) -> str:
        """The name used in metric labels (vLLM uses the first served name too)."""
        return self.served_model_names[0]
