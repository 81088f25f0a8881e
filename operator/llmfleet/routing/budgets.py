"""Budgets of tenants and RoutePolicies: the limits from their specs, what their statuses
say is spent, and the status and Events of a change. Pure.

The leader's rate-limit service counts the spend (``routing.ratelimit.Limiter``) and
writes it into the owner's status.budgets every few seconds; every operator replica
reads the statuses back, so what a spent budget does to the routes (``downgrade``)
follows from the persisted status, the same on every replica and across restarts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..api.models import Budget
from ..status.conditions import WantedCondition, parse_rfc3339, rfc3339
from .ratelimit import Spend, window_start
from .table import BudgetLimit

_OUTCOME = {"refuse": "; requests are refused until the next period",
            "downgrade": "; requests go to the cheapest backend until the next period"}


def budget_limits(budgets: Iterable[Budget]) -> tuple[BudgetLimit, ...]:
    return tuple(BudgetLimit(b.period.value, b.dollars, b.tokens, b.warn_at_percent, b.action.value) for b in budgets)


POLICY_PREFIX = "routepolicy:"


def policy_subject(namespace: str, name: str) -> str:
    """The name a RoutePolicy's budgets are counted under (a tenant's is "<namespace>/<name>",
    which never holds a colon)."""
    return f"{POLICY_PREFIX}{namespace}/{name}"


def subject_owner(subject: str) -> str:
    """Who a budget's subject belongs to, for a person: "tenant ns/name" or "RoutePolicy ns/name"."""
    if subject.startswith(POLICY_PREFIX):
        return f"RoutePolicy {subject.removeprefix(POLICY_PREFIX)}"
    return f"tenant {subject}"


def _window(row: Mapping[str, Any]) -> float | None:
    try:
        return parse_rfc3339(str(row["windowStart"]))
    except (KeyError, ValueError):
        return None


def spent_to_downgrade(budgets: Sequence[BudgetLimit], rows: Iterable[Mapping[str, Any]] | None, now: float) -> bool:
    """Whether a budget that downgrades is spent in its current period, as status.budgets says."""
    periods = {b.period for b in budgets if b.action == "downgrade"}
    for row in rows or ():
        period = row.get("period")
        if period in periods and float(row.get("usedPercent") or 0) >= 100 \
                and _window(row) == window_start(period, now):
            return True
    return False


def _amount(budget: BudgetLimit, spend: Spend) -> str:
    if budget.dollars is not None:
        return f"{spend.dollars:.2f} of {budget.dollars:.2f}"
    return f"{spend.tokens} of {budget.tokens} tokens"


@dataclass(frozen=True)
class BudgetReport:
    """An owner's budgets as its status says them, and the Events of a change."""

    budgets: list[dict[str, Any]]  # status.budgets
    exceeded: WantedCondition  # BudgetExceeded
    events: list[tuple[str, str, str]]  # (type, reason, message)


def budget_report(rows: Sequence[tuple[BudgetLimit, Spend]], before: Mapping[str, float]) -> BudgetReport:
    """``rows``: each budget and its spend now; ``before``: the share each period had
    used when last reported (an Event marks crossing the warning share and the whole)."""
    budgets, spent, events = [], [], []
    for budget, spend in rows:
        used = spend.used(budget)
        budgets.append({"period": budget.period, "windowStart": rfc3339(spend.window),
                        "spentDollars": round(spend.dollars, 6), "spentTokens": spend.tokens,
                        "usedPercent": round(100 * used, 2)})
        was = before.get(budget.period, 0.0)
        what = f"{budget.period} budget: {_amount(budget, spend)} spent since {rfc3339(spend.window)}"
        if used >= 1.0:
            spent.append(what + _OUTCOME.get(budget.action, ""))
            if was < 1.0:
                events.append(("Warning", "BudgetExceeded", spent[-1]))
        elif used * 100 >= budget.warn_percent > was * 100:
            events.append(("Warning", "BudgetWarning", f"{what} ({100 * used:.0f} %)"))
    exceeded = (WantedCondition("BudgetExceeded", True, "BudgetSpent", "; ".join(spent)) if spent
                else WantedCondition("BudgetExceeded", False, "WithinBudget", "every budget has room"))
    return BudgetReport(budgets, exceeded, events)
