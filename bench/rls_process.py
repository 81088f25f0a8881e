"""The operator's rate-limit service in a process of its own, for ``bench_dataplane.py``.

In a cluster the rate-limit service runs in the operator's process, on CPU of its own;
in the bench's process it would share the load generator's interpreter (one GIL) and
core. This process serves our xDS server's gRPC (which holds the rate-limit service) for
the bench's tenant: it reads the tenant's API key from stdin (never from the command
line), prints ``port N`` once it serves, and stops when stdin closes.

    .venv/bin/python bench/rls_process.py   # with the key on stdin
"""

from __future__ import annotations

import sys

from llmfleet_devcluster.xds import BackgroundXdsServer
from prometheus_client import CollectorRegistry

from llmfleet.routing.table import RateLimit, RouteTable, TenantAccess

LOCALHOST = "127.0.0.1"


def bench_tenant(key: str) -> TenantAccess:
    """The bench's tenant: request and token limits it never reaches."""
    unbounded = RateLimit(10**9, 1, 10**9)
    return TenantAccess("bench/tenant", (key,), ("*",), unbounded, unbounded)


def main() -> int:
    key = sys.stdin.readline().strip()
    server = BackgroundXdsServer(listener_port=1, listener_address=LOCALHOST, registry=CollectorRegistry())
    port = server.start(LOCALHOST, 0)
    server.update(RouteTable(tenants=(bench_tenant(key),)))
    print(f"port {port}", flush=True)
    try:
        sys.stdin.read()  # until the bench closes it
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
