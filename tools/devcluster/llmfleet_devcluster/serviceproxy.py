"""Services for the dev cluster: each ClusterIP at a loopback address, forwarded in user space.

Kubernetes gives every Service an address from the service CIDR (10.96.0.0/16 here)
and kube-proxy forwards it to ready pods. Those addresses are not this machine's, so
the dev cluster maps each one to a loopback address, ``10.96.A.B → 127.S.A.B`` (S is
the cluster's own second octet), and forwards TCP from there to a ready endpoint, as
kube-proxy's old userspace mode did: one listener per Service port, round robin over
endpoints, connection refused while a Service has no ready endpoint. The system
node's pods resolve Service names to these addresses through their /etc/hosts
(``name``, ``name.ns``, ``name.ns.svc``, ``name.ns.svc.cluster.local``); the
``kubernetes`` Service leads to the API server.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import itertools
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)
CLUSTER_DOMAIN = "cluster.local"
CONNECT_TIMEOUT = 3.0


def service_vip(cluster_ip: str, octet: int) -> str:
    """The loopback address that stands for a Service's ClusterIP."""
    packed = ipaddress.ip_address(cluster_ip).packed
    return f"127.{octet}.{packed[2]}.{packed[3]}"


def pod_ready(pod: dict) -> bool:
    status = pod.get("status") or {}
    return (not pod["metadata"].get("deletionTimestamp") and bool(status.get("podIP"))
            and any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []))


def _target_port(pod: dict, target) -> int | None:
    if isinstance(target, int):
        return target
    for container in pod["spec"].get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == target:
                return int(port["containerPort"])
    return None


@dataclass(frozen=True)
class ServicePort:
    namespace: str
    name: str
    vip: str
    port: int
    endpoints: tuple[tuple[str, int], ...]


def service_table(services: list[dict], pods: list[dict], octet: int,
                  api_server: tuple[str, int] | None) -> list[ServicePort]:
    """Every TCP Service port with its ready endpoints (pure: tested without sockets)."""
    by_namespace: dict[str, list[dict]] = {}
    for pod in pods:
        if pod_ready(pod):
            by_namespace.setdefault(pod["metadata"]["namespace"], []).append(pod)
    table = []
    for svc in services:
        meta, spec = svc["metadata"], svc.get("spec") or {}
        cluster_ip = spec.get("clusterIP")
        if not cluster_ip or cluster_ip == "None":
            continue
        vip = service_vip(cluster_ip, octet)
        selector = spec.get("selector")
        for port in spec.get("ports") or []:
            if port.get("protocol", "TCP") != "TCP":
                continue
            endpoints: list[tuple[str, int]] = []
            if meta["namespace"] == "default" and meta["name"] == "kubernetes" and api_server:
                endpoints = [api_server]
            elif selector:
                for pod in by_namespace.get(meta["namespace"], []):
                    labels = pod["metadata"].get("labels") or {}
                    if all(labels.get(k) == v for k, v in selector.items()):
                        target = _target_port(pod, port.get("targetPort", port["port"]))
                        if target is not None:
                            endpoints.append((pod["status"]["podIP"], target))
            table.append(ServicePort(meta["namespace"], meta["name"], vip, int(port["port"]),
                                     tuple(sorted(endpoints))))
    return table


def service_names(services: list[dict], octet: int) -> dict[str, list[tuple[str, str]]]:
    """namespace → [(address, name)] of its Services, for /etc/hosts."""
    names: dict[str, list[tuple[str, str]]] = {}
    for svc in services:
        cluster_ip = (svc.get("spec") or {}).get("clusterIP")
        if cluster_ip and cluster_ip != "None":
            meta = svc["metadata"]
            names.setdefault(meta["namespace"], []).append((service_vip(cluster_ip, octet), meta["name"]))
    return names


def hosts_file(pod_ip: str, hostname: str, namespace: str, names: dict[str, list[tuple[str, str]]],
               aliases: Sequence[dict] = ()) -> str:
    """A pod's /etc/hosts: the kubelet's usual lines, plus every Service (the cluster's DNS here)."""
    lines = ["# Kubernetes-managed hosts file (the llmfleet dev cluster's kubelet).",
             "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
             f"{pod_ip}\t{hostname}"]
    for alias in aliases or ():
        lines.append(f"{alias['ip']}\t{' '.join(alias.get('hostnames') or [])}")
    for ns in sorted(names):
        for address, name in sorted(names[ns]):
            fqdn = f"{name}.{ns}.svc"
            short = [name] if ns == namespace else []
            lines.append(f"{address}\t{fqdn}.{CLUSTER_DOMAIN} {fqdn} {name}.{ns} {' '.join(short)}".rstrip())
    return "\n".join(lines) + "\n"


def resolv_conf(namespace: str) -> str:
    """Search domains as a kubelet writes them; the nameserver is the pod's own
    loopback, where nothing listens: a name not in /etc/hosts fails at once, and no
    query ever leaves the machine."""
    return (f"search {namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\n"
            "nameserver 127.0.0.1\noptions ndots:5\n")


class ServiceProxy:
    """Listens on every Service port that has endpoints and forwards connections."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="service proxy", daemon=True)
        self._servers: dict[tuple[str, int], asyncio.base_events.Server] = {}
        self._endpoints: dict[tuple[str, int], tuple[tuple[str, int], ...]] = {}
        self._turn = itertools.count()

    def start(self) -> ServiceProxy:
        self._thread.start()
        return self

    def update(self, table: list[ServicePort]) -> None:
        """Thread-safe: make the listeners match the table."""
        wanted = {(p.vip, p.port): p.endpoints for p in table if p.endpoints}
        asyncio.run_coroutine_threadsafe(self._apply(wanted), self._loop).result(timeout=10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._apply({}), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    async def _apply(self, wanted: dict[tuple[str, int], tuple[tuple[str, int], ...]]) -> None:
        self._endpoints = wanted
        for key in set(self._servers) - set(wanted):
            server = self._servers.pop(key)
            server.close()
        for key in set(wanted) - set(self._servers):
            try:
                self._servers[key] = await asyncio.start_server(
                    functools.partial(self._forward, key), host=key[0], port=key[1], reuse_address=True)
            except OSError as exc:
                log.warning("service proxy: cannot listen on %s:%s: %s", *key, exc)

    async def _forward(self, key: tuple[str, int], reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        endpoints = self._endpoints.get(key) or ()
        upstream = None
        start = next(self._turn)
        for i in range(len(endpoints)):  # round robin; a refused endpoint passes to the next
            host, port = endpoints[(start + i) % len(endpoints)]
            try:
                upstream = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT)
                break
            except (TimeoutError, OSError):
                continue
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            writer.close()
            up_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close (the other direction may still be sending)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()
