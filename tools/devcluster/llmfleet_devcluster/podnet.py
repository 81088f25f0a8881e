"""Pod networking for the dev cluster's system node: a bridge and a network namespace per pod.

Pods the system node's kubelet runs (the operator, the Envoy ingress: what the Helm
chart installs) get a network namespace each, as on a real node: their own loopback,
so an Envoy admin interface on 127.0.0.1 is private to its pod and two pods can both
listen on 0.0.0.0:8080. Each namespace is joined to a bridge on the host by a veth
pair, the way the CNI bridge plugin (and kubenet's cbr0) does it:

- the bridge has a MAC address of its own: a Linux bridge left to itself takes the
  lowest MAC of its ports and changes it as pods come and go, and every pod that
  still has the old one in its ARP cache loses its gateway (the host: the API server,
  Services, the model servers) for tens of seconds, until it resolves it again;
- pod IPs come from a /24 of 198.18.0.0/15 (RFC 2544's benchmarking range, never
  routed on the internet) that no interface or route of this machine uses; a
  blackhole route for the /24 outlives the bridge, so traffic to a pod that is gone
  never leaves the machine, and the host does not forward (ip_forward stays as it
  is: pods only reach the host and each other over the bridge);
- the rest of the dev cluster lives on host loopback addresses (the API server on
  127.0.0.1 behind the `kubernetes` Service's address, model-server pods of KWOK
  nodes on 127.X.Y.Z): a pod reaches them through its default route to the host,
  which needs ``route_localnet`` on both ends and a pod loopback that claims only
  127.0.0.1 instead of all of 127.0.0.0/8.

Everything here needs root (CAP_NET_ADMIN); it shells out to iproute2's ``ip``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import secrets
import shutil
import subprocess
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)
POD_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
BLACKHOLE_METRIC = 4000  # above the bridge's own route, which wins while the bridge exists


class PodNetworkError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    ip = shutil.which("ip") or "/usr/sbin/ip"
    proc = subprocess.run([ip, *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise PodNetworkError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def _sysctl_in(netns: str | None, **values: str) -> None:
    """Write /proc/sys/net entries, in a pod's namespace or the host's."""
    prefix = ["netns", "exec", netns] if netns else []
    for key, value in values.items():
        path = "/proc/sys/net/" + key.replace(".", "/")
        if netns:
            _ip(*prefix, "sh", "-c", f"echo {value} > {path}")
        else:
            with open(path, "w") as f:
                f.write(value)


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network this machine has a route or an address in."""
    used = []
    for entry in json.loads(_ip("-j", "-4", "route", "show", "table", "all").stdout or "[]"):
        dst = entry.get("dst", "")
        if dst and dst != "default":
            with contextlib.suppress(ValueError):
                used.append(ipaddress.IPv4Network(dst, strict=False))
    return used


@dataclass(frozen=True)
class PodInterface:
    """A pod's network: its namespace (``ip netns`` name) and address."""

    netns: str
    ip: str


class PodNetwork:
    """A bridge, its /24 and the pods attached to it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.subnet: ipaddress.IPv4Network = list(POD_RANGE.subnets(new_prefix=24))[index]
        hosts = list(self.subnet.hosts())
        self.gateway = str(hosts[0])
        self._free = [str(h) for h in hosts[1:]]
        self.bridge = f"lfbr{index}"
        # Locally administered, unicast (02:...), set once: the pods' gateway MAC never moves.
        self.bridge_mac = "02:" + ":".join(secrets.token_hex(1) for _ in range(5))
        # Deleting a namespace frees its veth only later (the kernel cleans up network
        # namespaces asynchronously), so a cluster that reuses this index right after
        # this one must not reuse its interface names.
        self.token = secrets.token_hex(2)
        self._lock = threading.Lock()
        self._serial = 0
        self.pods: dict[str, PodInterface] = {}  # netns name → interface

    @classmethod
    def create(cls) -> PodNetwork:
        """Pick a /24 nothing on this machine uses and bring its bridge up."""
        used = _used_networks()
        existing = {link["ifname"] for link in json.loads(_ip("-j", "link", "show").stdout or "[]")}
        for index, subnet in enumerate(POD_RANGE.subnets(new_prefix=24)):
            if f"lfbr{index}" in existing or any(subnet.overlaps(n) for n in used):
                continue
            net = cls(index)
            try:
                net._setup()
            except PodNetworkError as exc:
                if "File exists" in str(exc):  # another dev cluster took it meanwhile
                    continue
                raise
            return net
        raise PodNetworkError(f"no free /24 left in {POD_RANGE} for pod IPs")

    def _setup(self) -> None:
        _ip("link", "add", self.bridge, "address", self.bridge_mac, "type", "bridge")
        try:
            _ip("route", "add", "blackhole", str(self.subnet), "metric", str(BLACKHOLE_METRIC))
            _sysctl_in(None, **{f"ipv6.conf.{self.bridge}.disable_ipv6": "1",
                                f"ipv4.conf.{self.bridge}.route_localnet": "1"})
            _ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        except BaseException:
            self.teardown()
            raise

    def attach(self) -> PodInterface:
        """A new network namespace with an address on the bridge."""
        with self._lock:
            if not self._free:
                raise PodNetworkError(f"no pod IP left in {self.subnet}")
            ip = self._free.pop(0)
            self._serial += 1
            netns = f"lf{self.index}-{self.token}-{self._serial}"
            veth = f"lfv{self.token}-{self._serial}"  # at most 15 characters (IFNAMSIZ)
        try:
            _ip("netns", "add", netns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
            _sysctl_in(None, **{f"ipv6.conf.{veth}.disable_ipv6": "1"})
            _ip("link", "set", veth, "master", self.bridge, "up")
            _ip("-n", netns, "link", "set", "lo", "up")
            # The pod's loopback keeps 127.0.0.1; the rest of 127/8 is the host's.
            _ip("-n", netns, "route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local")
            _sysctl_in(netns, **{"ipv6.conf.all.disable_ipv6": "1",
                                 "ipv4.conf.all.route_localnet": "1"})
            _ip("-n", netns, "addr", "add", f"{ip}/{self.subnet.prefixlen}", "dev", "eth0")
            _ip("-n", netns, "link", "set", "eth0", "up")
            _sysctl_in(netns, **{"ipv4.conf.eth0.route_localnet": "1"})
            _ip("-n", netns, "route", "add", "default", "via", self.gateway, "dev", "eth0")
        except BaseException:
            _ip("netns", "del", netns, check=False)
            with self._lock:
                self._free.append(ip)
            raise
        pod = PodInterface(netns, ip)
        with self._lock:
            self.pods[netns] = pod
        return pod

    def detach(self, pod: PodInterface) -> None:
        """Remove the pod's namespace (its veth pair goes with it) and free its IP."""
        _ip("netns", "del", pod.netns, check=False)
        with self._lock:
            if self.pods.pop(pod.netns, None) is not None:
                self._free.append(pod.ip)

    def teardown(self) -> None:
        for pod in list(self.pods.values()):
            self.detach(pod)
        _ip("link", "del", self.bridge, check=False)
        _ip("route", "del", "blackhole", str(self.subnet), "metric", str(BLACKHOLE_METRIC), check=False)


def remove_leftovers(index: int) -> None:
    """What a killed kubelet left behind for bridge ``index`` (``dev-cluster down``)."""
    for ns in json.loads(_ip("-j", "netns", "list").stdout or "[]"):
        if ns.get("name", "").startswith(f"lf{index}-"):
            _ip("netns", "del", ns["name"], check=False)
    subnet = list(POD_RANGE.subnets(new_prefix=24))[index]
    _ip("link", "del", f"lfbr{index}", check=False)
    _ip("route", "del", "blackhole", str(subnet), "metric", str(BLACKHOLE_METRIC), check=False)
