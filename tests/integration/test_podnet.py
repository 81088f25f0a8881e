"""The dev cluster's pod network: pods keep their way to the host while others come and go."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from llmfleet_devcluster.podnet import PodNetwork
from llmfleet_devcluster.podnet import _ip as ip


def _ip(*args: str) -> str:
    return ip(*args).stdout


def _ports(net: PodNetwork) -> dict[str, str]:
    """The bridge's ports (the pods' host-side veths) → their MACs."""
    return {link["ifname"]: link["address"] for link in json.loads(_ip("-j", "link", "show", "master", net.bridge))}


def _bridge_mac(net: PodNetwork) -> str:
    return json.loads(_ip("-j", "link", "show", net.bridge))[0]["address"]


def _connects(netns: str, address: str, port: int) -> bool:
    """A TCP connect from inside the pod, given 2 s."""
    code = f"import socket; socket.create_connection(({address!r}, {port}), timeout=2).close()"
    return subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code],
                          capture_output=True, timeout=10).returncode == 0


def test_a_pod_keeps_reaching_the_host_while_other_pods_come_and_go():
    """A Linux bridge left to itself takes the lowest MAC of its ports. A pod that
    resolved its gateway while that port's pod ran would lose the host (the API server,
    Services, the model servers) once that pod is gone, until its ARP entry expired:
    Envoys stalled under load while the operator's pods rolled."""
    net = PodNetwork.create()
    listener = socket.create_server((net.gateway, 0))
    port = listener.getsockname()[1]
    try:
        before = set(_ports(net))
        leaving = net.attach()
        (veth,) = set(_ports(net)) - before
        _ip("link", "set", veth, "address", "02:00:00:00:00:01")  # lower than any MAC the kernel draws
        staying = net.attach()
        assert _connects(staying.netns, net.gateway, port)  # the pod has resolved its gateway
        mac = _bridge_mac(net)
        net.detach(leaving)
        assert _bridge_mac(net) == mac
        assert _connects(staying.netns, net.gateway, port), "the pod lost its gateway when another pod left"
    finally:
        listener.close()
        net.teardown()
