"""Tenants → who the ingress lets in: their keys, models and limits, and each Tenant's status. Pure.

A tenant's keys are the values of the Secret its spec names (labelled as API keys, in
its namespace). A key may belong to one tenant only: when two claim the same key, the
older Tenant keeps it and the other is told which of its Secret's entries clashes
(never the key itself). The ingress is open while no Tenant exists; once one does,
every request needs a key, so a Tenant whose Secret is missing fails closed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..api.models import API_KEYS_LABEL, RATE_UNIT_SECONDS, RateScope, TenantLimits
from ..kube.views import Ref, SecretView, TenantView
from ..status.conditions import WantedCondition
from .budgets import budget_limits, spent_to_downgrade
from .table import ALL_MODELS, RateLimit, TenantAccess


@dataclass(frozen=True)
class TenantResult:
    """Status for one Tenant."""

    namespace: str
    name: str
    generation: int | None
    keys: int
    ready: WantedCondition


def client_name(namespace: str, name: str) -> str:
    """The name Envoy knows a tenant by (and forwards in x-llmfleet-tenant)."""
    return f"{namespace}/{name}"


def _limits(limits: TenantLimits | None) -> tuple[RateLimit | None, RateLimit | None]:
    if limits is None:
        return None, None
    requests = tokens = None
    if limits.requests is not None:
        r = limits.requests
        requests = RateLimit(r.limit, RATE_UNIT_SECONDS[r.per], r.burst or r.limit, local=r.scope == RateScope.LOCAL)
    if limits.tokens is not None:
        t = limits.tokens
        tokens = RateLimit(t.limit, RATE_UNIT_SECONDS[t.per], t.limit)
    return requests, tokens


def _age_key(tenant: TenantView) -> tuple[str, str, str]:
    return (tenant.created, tenant.namespace, tenant.name)


def compute_tenants(tenants: Sequence[TenantView], secrets: Iterable[SecretView], public_models: Iterable[str],
                    now: float) -> tuple[tuple[TenantAccess, ...] | None, list[TenantResult]]:
    """What the ingress enforces (None: no Tenant, the ingress is open) and each Tenant's status.
    ``now`` (epoch seconds) tells which budget periods of the statuses are current."""
    if not tenants:
        return None, []
    by_ref: Mapping[Ref, SecretView] = {s.ref: s for s in secrets}
    served = set(public_models)
    owners: dict[str, str] = {}  # API key → the tenant that has it
    access: list[TenantAccess] = []
    results: list[TenantResult] = []
    for tenant in sorted(tenants, key=_age_key):
        name = client_name(tenant.namespace, tenant.name)

        def result(keys: int, ready: bool, reason: str, message: str,
                   tenant: TenantView = tenant) -> TenantResult:
            return TenantResult(tenant.namespace, tenant.name, tenant.generation, keys,
                                WantedCondition("Ready", ready, reason, message))

        spec = tenant.spec
        if spec is None:
            results.append(result(0, False, "InvalidSpec", tenant.invalid or "the spec is refused"))
            continue
        secret_name = spec.api_keys.secret_name
        secret = by_ref.get((tenant.namespace, secret_name))
        if secret is None:
            results.append(result(0, False, "SecretNotFound", (
                f"Secret {tenant.namespace}/{secret_name} not found: the operator reads only Secrets with the "
                f"label {API_KEYS_LABEL} (kubectl label secret {secret_name} {API_KEYS_LABEL}=true)")))
            continue
        keys: list[str] = []
        problems: list[str] = []
        for entry, key in secret.keys:
            owner = owners.get(key)
            if not key:
                problems.append(f"entry {entry!r} is empty")
            elif owner is not None and owner != name:
                problems.append(f"entry {entry!r} holds a key of Tenant {owner}, which is older and keeps it")
            elif key not in keys:
                keys.append(key)
                owners[key] = name
        problems += [f"entry {entry!r} is not UTF-8 text" for entry in secret.undecodable]
        requests, tokens = _limits(spec.limits)
        cap = spec.limits.max_concurrent_requests if spec.limits else None
        budgets = budget_limits(spec.budgets)
        access.append(TenantAccess(name, tuple(keys), tuple(spec.models), requests, tokens, cap, budgets,
                                   downgraded=spent_to_downgrade(budgets, tenant.status.get("budgets"), now)))
        unknown = [m for m in spec.models if m != ALL_MODELS and m not in served]
        notes = [f"no RoutePolicy serves {', '.join(unknown)} (yet)"] if unknown else []
        if not keys:
            results.append(result(0, False, "NoKeys", "; ".join([
                f"Secret {tenant.namespace}/{secret_name} holds no usable API key", *problems, *notes])))
        elif problems:
            results.append(result(len(keys), False, "KeyConflict", "; ".join([
                f"{len(keys)} key(s) of Secret {tenant.namespace}/{secret_name} accepted", *problems, *notes])))
        else:
            results.append(result(len(keys), True, "KeysAccepted", "; ".join([
                f"{len(keys)} key(s) of Secret {tenant.namespace}/{secret_name} accepted for "
                f"{', '.join(spec.models)}", *notes])))
    return tuple(access), results
