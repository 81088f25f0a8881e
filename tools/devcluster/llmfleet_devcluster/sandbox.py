"""Start one container of a system-node pod: ``python -m llmfleet_devcluster.sandbox PLAN.json``.

The kubelet (kubelet.py) writes a plan and runs this as root; it sets up
what a container runtime would, then replaces itself with the container's process:

1. joins the pod's network namespace and makes new mount, UTS and IPC namespaces
   (the hostname is the pod's name);
2. builds a root filesystem on a tmpfs: the image's layers bound read-only at their
   paths (images.py), fresh /proc and /sys, a minimal /dev with a private /dev/shm,
   the pod's volumes at their mountPaths (ConfigMaps, Secrets, the projected
   ServiceAccount token, emptyDirs) and the kubelet's /etc/hosts and
   /etc/resolv.conf, then pivots into it; with ``readOnlyRootFilesystem`` the root
   itself is remounted read-only, so only volumes are writable;
3. drops to the container's user and groups, drops the capability bounding set
   (``capabilities.drop: [ALL]``), sets no_new_privs, and execs the command with the
   container's environment.

No cgroup limits and no seccomp filter are applied (the dev cluster checks neither).
A plan that cannot be set up exits 128 with the reason on stderr (the container log).
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import signal
import socket
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWNET = 0x00020000, 0x04000000, 0x08000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
SETUP_FAILED = 128

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)


class SetupError(Exception):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(source.encode() if source else None, target.encode(), fstype.encode() if fstype else None,
                       flags, data.encode() if data else None), f"mount {source or fstype} on {target}")


def _bind(source: str, target: str, read_only: bool) -> None:
    _mount(source, target, None, MS_BIND | MS_REC)
    if read_only:
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _mountpoint(root: str, target: str, like: str | None) -> str:
    """Create ``root + target`` as a directory, or as an empty file when ``like`` is a file."""
    path = root + target
    is_file = like is not None and os.path.exists(like) and not os.path.isdir(like)
    os.makedirs(os.path.dirname(path) if is_file else path, mode=0o755, exist_ok=True)
    if is_file and not os.path.exists(path):
        open(path, "w").close()
    return path


def _depth(target: str) -> int:
    return target.rstrip("/").count("/")


def build_root(plan: dict) -> None:
    root = plan["rootfs"]
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
    _mount("proc", _mountpoint(root, "/proc", None), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mount("sysfs", _mountpoint(root, "/sys", None), "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
    dev = _mountpoint(root, "/dev", None)
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755")
    for name in DEVICES:
        _bind(f"/dev/{name}", _mountpoint(root, f"/dev/{name}", f"/dev/{name}"), read_only=False)
    _mount("shm", _mountpoint(root, "/dev/shm", None), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
           "mode=1777,size=65536k")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")
    # Image layers and volumes, the shallower first: a volume over a directory that
    # also holds image files (an emptyDir at /tmp, with this checkout under /tmp)
    # must not hide them; at the same path the volume wins, as over an image's file.
    entries = [(False, layer) for layer in plan["image"]] + [(True, mount) for mount in plan["mounts"]]
    for is_volume, entry in sorted(entries, key=lambda e: (_depth(e[1]["target"]), e[0], e[1]["target"])):
        target = entry["target"]
        if not is_volume:
            if "symlink" in entry:
                os.makedirs(os.path.dirname(root + target), exist_ok=True)
                os.symlink(entry["symlink"], root + target)
            else:
                _bind(entry["source"], _mountpoint(root, target, entry["source"]), read_only=True)
        elif entry.get("tmpfs"):
            _mount("tmpfs", _mountpoint(root, target, None), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
        elif not os.path.exists(entry["source"]):
            raise SetupError(f"volume source {entry['source']} for {target} does not exist")
        else:
            _bind(entry["source"], _mountpoint(root, target, entry["source"]), entry.get("readOnly", False))
    os.makedirs(root + plan.get("workingDir", "/"), exist_ok=True)


def pivot(root: str, read_only: bool) -> None:
    number = SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise SetupError(f"pivot_root: unsupported machine {platform.machine()}")
    os.chdir(root)
    os.makedirs(".oldroot", exist_ok=True)
    _check(_libc.syscall(number, b".", b".oldroot"), "pivot_root")
    os.chdir("/")
    _check(_libc.umount2(b"/.oldroot", MNT_DETACH), "umount the host root")
    os.rmdir("/.oldroot")
    if read_only:
        _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def drop_privileges(plan: dict) -> None:
    user = plan["user"]
    drop = set(plan.get("dropCapabilities") or [])
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    if "ALL" in drop or user["uid"] != 0:
        # A non-root process ends with no capabilities anyway (setuid clears them);
        # dropping the bounding set keeps it so across exec.
        for cap in range(last + 1):
            _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    os.setgroups(user.get("groups") or [])
    os.setresgid(user["gid"], user["gid"], user["gid"])
    os.setresuid(user["uid"], user["uid"], user["uid"])
    if plan.get("noNewPrivs", True):
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    # Changing credentials cleared the parent-death signal the kubelet set.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:
        raise SetupError("the kubelet went away")


def enter(plan: dict) -> None:
    fd = os.open(f"/run/netns/{plan['netns']}", os.O_RDONLY)
    _check(_libc.setns(fd, CLONE_NEWNET), f"join network namespace {plan['netns']}")
    os.close(fd)
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC), "unshare")
    socket.sethostname(plan["hostname"])
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    build_root(plan)
    pivot(plan["rootfs"], plan.get("readOnlyRootFilesystem", False))
    os.chdir(plan.get("workingDir") or "/")
    drop_privileges(plan)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    with open(args[0]) as f:
        plan = json.load(f)
    try:
        enter(plan)
    except (SetupError, OSError) as exc:
        print(f"dev kubelet: cannot start the container: {exc}", file=sys.stderr, flush=True)
        return SETUP_FAILED
    argv_ = plan["argv"]
    try:
        os.execvpe(argv_[0], argv_, plan["env"])
    except OSError as exc:
        print(f"dev kubelet: exec {argv_[0]}: {exc.strerror} (PATH={plan['env'].get('PATH', '')})",
              file=sys.stderr, flush=True)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
