"""metav1.Condition lists, kept the way Kubernetes controllers keep them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class WantedCondition:
    """What a controller wants one condition to say; :func:`merge_conditions` turns it
    into the stored form (``api.models.Condition``) with its transition time."""

    type: str
    status: bool
    reason: str
    message: str

    @property
    def status_text(self) -> str:
        return "True" if self.status else "False"


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339(epoch: float) -> str:
    """A Kubernetes timestamp ("2026-11-22T10:00:00Z") of seconds since the epoch."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> float:
    """Seconds since the epoch of a Kubernetes timestamp ("2026-11-22T10:00:00Z", fractions allowed)."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def merge_conditions(
    current: list[dict] | None, wanted: list[WantedCondition], generation: int | None, now: str | None = None
) -> list[dict]:
    """The new condition list: `lastTransitionTime` moves only when status flips,
    so rewriting an unchanged condition is a no-op (and so is the status patch)."""
    by_type = {c.get("type"): c for c in current or []}
    out = []
    for cond in wanted:
        old = by_type.get(cond.type)
        changed = old is None or old.get("status") != cond.status_text
        since = old.get("lastTransitionTime") if old is not None else None
        out.append(
            {
                "type": cond.type,
                "status": cond.status_text,
                "reason": cond.reason,
                "message": cond.message,
                "observedGeneration": generation,
                "lastTransitionTime": (now or now_rfc3339()) if changed else since,
            }
        )
    return out


def find(conditions: list[dict] | None, type_: str) -> dict | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def is_true(conditions: list[dict] | None, type_: str) -> bool:
    cond = find(conditions, type_)
    return bool(cond and cond.get("status") == "True")
