"""A multi-host test bed on one Linux machine: network namespaces joined by a bridge.

Each host is a network namespace with one interface, `eth0`, holding an address of
`SUBNET`; the other end of its cable is a port of a bridge that lives in a namespace of
its own (the switch), so the machine's own network namespace gets no address and no
route onto the bed. A program runs on a host through `Bed.command_prefix` (with the
host's name as its hostname, so records and Celery node names tell hosts apart), and
code of this process reaches a host through `Bed.reach`, from a thread that lives in
that host's namespace.

A partition (`Bed.cut`) takes the switch's port of a host down: to the host it looks like
a cable pulled at the switch, so TCP retransmits and a read stalls until its timeout,
rather than failing at once as it would if the host's own interface went down. A cut
between two hosts only (the API host and the Redis host, say, while clients still reach
the API) points each at a hardware address nobody has, with the same effect.

Namespaces are named `<prefix>-<owner pid>-<host>`, and the switch
`<prefix>-<owner pid>-switch`: `sweep(prefix)` (run by `Bed.open` too) removes what a
crashed run left behind without touching a bed whose owner still runs, such as another
test session's on the same machine.

Linux only, as root. Only the standard library and the `ip` command of iproute2.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

# The bed's addresses: a private /24 that a development machine or CI runner is unlikely
# to use. Nothing outside the bed's own namespaces has a route to it.
SUBNET = "10.77.0"
PREFIX_LENGTH = 24
SWITCH = "switch"
NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000

# How long processes still running on a host get after SIGTERM at teardown, before
# SIGKILL; and how long they then get to be gone. The whole teardown stays well under
# 10 s even with a program that ignores SIGTERM.
TERM_GRACE_SECONDS = 3.0
KILL_WAIT_SECONDS = 2.0

# Threads per host that `reach` may run at once: enough for a test to keep a blocked
# client on a host and still ask something else of it.
REACH_THREADS = 4

# A hardware address no interface of the bed has: what a cut between two hosts makes
# each of them send to (locally administered, so no real card has it either).
NOWHERE_MAC = "02:00:00:00:00:01"

# A host's name is its hostname and part of an interface name (`v-<host>` at the
# switch), which Linux limits to 15 characters.
HOST_NAME = re.compile(r"[a-z][a-z0-9-]{0,12}")
PREFIX = re.compile(r"[a-z][a-z0-9]{0,15}")  # no '-': it separates the parts of a name

T = TypeVar("T")


class BedError(RuntimeError):
    """An `ip` command failed; the message has its command line and its error."""


def ip(*args: str, check: bool = True) -> str:
    """Run `ip ARGS...`; its output, or BedError with what it said."""
    result = subprocess.run([_binary("ip"), *args], capture_output=True, text=True, timeout=10)
    if check and result.returncode != 0:
        raise BedError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


@functools.cache
def _binary(name: str) -> str:
    # Absolute, so a program started with a caller's environment finds it whatever PATH.
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if found is None:
        raise BedError(f"`{name}` is not installed")
    return found


@functools.cache
def unavailable_reason() -> str | None:
    """Why a bed cannot be built here (not Linux, not root, no `ip` or `unshare`,
    namespaces or bridges refused), or None if it can: tried once, for real."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return "network namespaces need root (run the test bed as root, as CI does)"
    for tool in ("ip", "unshare"):
        try:
            _binary(tool)
        except BedError as error:
            return f"{error} (iproute2, util-linux)"
    probe = f"jrprobe-{os.getpid()}"
    try:
        ip("netns", "add", probe)
        ip("-n", probe, "link", "add", "br0", "type", "bridge")
        ip("-n", probe, "link", "add", "name", "probe0", "type", "veth", "peer", "name", "probe1")
    except (BedError, OSError, subprocess.SubprocessError) as error:
        return f"this machine refuses network namespaces, bridges or veth: {error}"
    finally:
        ip("netns", "del", probe, check=False)
    return None


# -- namespaces of this machine, and the processes in them -----------------------------


def namespaces() -> list[str]:
    """The named network namespaces of this machine (`ip netns list`)."""
    # Lines look like "name (id: 3)" or "name".
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def _namespace_identity(name: str) -> tuple[int, int] | None:
    try:
        found = os.stat(f"{NETNS_DIR}/{name}")
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def pids_in(names: list[str]) -> set[int]:
    """The processes whose network namespace is one of `names`, as `ip netns pids` finds
    them (by each process's /proc/PID/ns/net), but for several namespaces in one pass.
    An exited process not yet reaped (a zombie) has no namespace any more: not counted."""
    wanted = {identity for name in names if (identity := _namespace_identity(name))}
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = os.stat(f"/proc/{entry}/ns/net")
        except OSError:  # gone meanwhile, or a zombie
            continue
        if (stat.st_dev, stat.st_ino) in wanted:
            found.add(int(entry))
    return found


def _signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(names: list[str], timeout: float) -> set[int]:
    """Until no process is left in `names`, at most `timeout` seconds: those left."""
    deadline = time.monotonic() + timeout
    while (left := pids_in(names)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def dismantle(hosts: list[str], switch: str, grace: float = TERM_GRACE_SECONDS) -> set[int]:
    """Stop every process in the host namespaces `hosts` and in `switch` (SIGTERM, then
    SIGKILL after `grace` seconds), then delete the hosts' namespaces, the switch last.

    Processes first: deleting a namespace leaves its processes running, unreachable.
    Returns the pids it stopped.
    """
    everything = [*hosts, switch]
    stopped = pids_in(everything)
    _signal_all(stopped, signal.SIGTERM)
    if _wait_gone(everything, grace):
        # Some may have forked meanwhile: kill whatever is there now.
        left = pids_in(everything)
        stopped |= left
        _signal_all(left, signal.SIGKILL)
        if survivors := _wait_gone(everything, KILL_WAIT_SECONDS):
            warnings.warn(f"processes {sorted(survivors)} outlived SIGKILL", stacklevel=2)
    present = set(namespaces())
    for name in everything:  # the hosts' cables go with them, then the switch
        if name in present:
            ip("netns", "del", name, check=False)
    return stopped


def _parse(name: str, prefix: str) -> tuple[int, str] | None:
    """(owner pid, host or SWITCH) of a namespace of a bed of `prefix`, else None."""
    match = re.fullmatch(rf"{re.escape(prefix)}-(\d+)-(.+)", name)
    return (int(match.group(1)), match.group(2)) if match else None


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # "pid (command) state ...": the command may hold spaces and parentheses.
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def sweep(prefix: str) -> list[str]:
    """Remove the beds of `prefix` whose owner process has exited (a crashed or killed
    run), with every process still in them; the namespaces removed. A bed whose owner
    still runs is left alone."""
    left_behind: dict[int, list[str]] = {}
    for name in namespaces():
        parsed = _parse(name, prefix)
        if parsed is not None and not _running(parsed[0]):
            left_behind.setdefault(parsed[0], []).append(name)
    removed = []
    for owner, names in left_behind.items():
        switch = f"{prefix}-{owner}-{SWITCH}"
        dismantle([n for n in names if n != switch], switch, grace=0.5)
        removed += names
    return removed


# -- running code of this process on a host --------------------------------------------


def enter_namespace(name: str) -> None:
    """Move the calling thread (only it: setns is per thread) into network namespace
    `name`. A socket it creates afterwards belongs to that namespace for good."""
    fd = os.open(f"{NETNS_DIR}/{name}", os.O_RDONLY)
    try:
        if hasattr(os, "setns"):  # Python 3.12+
            os.setns(fd, CLONE_NEWNET)
            return
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {name}: {os.strerror(errno)}")
    finally:
        os.close(fd)


class HostThreads:
    """Calls run on threads living in one host's namespace: `reach(fn)` is `fn()` there.

    A call made from one of these threads runs at once on it (no deadlock when a reached
    function reaches the same host again).
    """

    def __init__(self, namespace: str, host: str):
        self.namespace = namespace
        self._inside = threading.local()
        self._executor = ThreadPoolExecutor(
            max_workers=REACH_THREADS,
            thread_name_prefix=f"bed-{host}",
            initializer=self._enter,
        )

    def _enter(self) -> None:
        enter_namespace(self.namespace)
        self._inside.yes = True

    def __call__(self, call: Callable[[], T]) -> T:
        if getattr(self._inside, "yes", False):
            return call()
        return self._executor.submit(call).result()

    def close(self) -> None:
        # Without waiting: a call still blocked on the host ends on its own (a timeout),
        # and its thread then exits, letting go of the namespace.
        self._executor.shutdown(wait=False, cancel_futures=True)


# -- the bed ---------------------------------------------------------------------------


class Bed:
    """Hosts (network namespaces) on one bridge, built by `open()` (or `with`), removed
    with every process on them by `close()`.

        with Bed(prefix="jrt", hosts=["redis", "api", "w1", "w2"]) as bed:
            argv = [*bed.command_prefix("redis"), "redis-server", "--bind",
                    bed.address("redis")]
            bed.reach("api")(lambda: socket.create_connection((bed.address("redis"), 6379)))
            with bed.partitioned("w2"):
                ...  # w2 cannot talk to anyone; the others still can
    """

    def __init__(self, prefix: str, hosts: list[str]):
        if not PREFIX.fullmatch(prefix):
            raise ValueError(f"prefix {prefix!r}: lower-case letters and digits, at most 16")
        for host in hosts:
            if not HOST_NAME.fullmatch(host) or host == SWITCH:
                raise ValueError(
                    f"host {host!r}: lower-case letters, digits and '-', at most 13, not {SWITCH!r}"
                )
        if len(set(hosts)) != len(hosts) or not 0 < len(hosts) < 254:
            raise ValueError(f"hosts {hosts}: 1 to 253 distinct names")
        self.prefix = prefix
        self.hosts = list(hosts)
        self.owner = os.getpid()
        self.switch = f"{prefix}-{self.owner}-{SWITCH}"
        self._reach: dict[str, HostThreads] = {}
        self._cut: set[str | frozenset[str]] = set()
        self.is_open = False

    # -- names and addresses ------------------------------------------------------------

    def namespace(self, host: str) -> str:
        """The network namespace of `host` (for `ip -n`, `ip netns exec`)."""
        self._check(host)
        return f"{self.prefix}-{self.owner}-{host}"

    def address(self, host: str) -> str:
        """The IPv4 address of `host` on the bed."""
        self._check(host)
        return f"{SUBNET}.{self.hosts.index(host) + 1}"

    def _port(self, host: str) -> str:
        return f"v-{host}"  # the switch's end of host's cable

    def _check(self, host: str) -> None:
        if host not in self.hosts:
            raise KeyError(f"no host {host!r} on this bed; hosts: {self.hosts}")

    # -- building and removing ----------------------------------------------------------

    def open(self) -> Bed:
        """Build the bed, after sweeping away what a crashed run of `prefix` left."""
        if self.is_open:
            return self
        sweep(self.prefix)
        taken = set(namespaces()) & {self.switch, *map(self.namespace, self.hosts)}
        if taken:
            raise BedError(f"namespaces {sorted(taken)} exist: a bed of this process is open")
        self.is_open = True
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        switch = self.switch
        ip("netns", "add", switch)
        ip("-n", switch, "link", "add", "br0", "type", "bridge")
        ip("-n", switch, "link", "set", "br0", "up")
        # Bridged frames must not go through iptables, where br_netfilter is loaded: a
        # firewall of this machine has no business on the bed.
        subprocess.run(
            [_binary("ip"), "netns", "exec", switch, "sh", "-c",
             "f=/proc/sys/net/bridge/bridge-nf-call-iptables; [ ! -e $f ] || echo 0 > $f"],
            check=True, capture_output=True, timeout=10,
        )  # fmt: skip
        for host in self.hosts:
            name, port = self.namespace(host), self._port(host)
            ip("netns", "add", name)
            ip("link", "add", "eth0", "netns", name, "type", "veth", "peer", "name", port,
               "netns", switch)  # fmt: skip
            ip("-n", switch, "link", "set", port, "master", "br0", "up")
            ip("-n", name, "addr", "add", f"{self.address(host)}/{PREFIX_LENGTH}", "dev", "eth0")
            ip("-n", name, "link", "set", "eth0", "up")
            ip("-n", name, "link", "set", "lo", "up")

    def close(self, grace: float = TERM_GRACE_SECONDS) -> set[int]:
        """Stop every process on the bed (SIGTERM, SIGKILL after `grace` seconds) and
        delete its namespaces; the pids it stopped. Safe to call twice."""
        for threads in self._reach.values():
            threads.close()
        self._reach.clear()
        if not self.is_open:
            return set()
        self.is_open = False
        hosts = [self.namespace(host) for host in self.hosts]
        return dismantle(hosts, self.switch, grace)

    def __enter__(self) -> Bed:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- running things on a host -------------------------------------------------------

    def command_prefix(self, host: str) -> list[str]:
        """What to put before a command so it runs on `host` with `host` as hostname.

        Every step execs the next (`ip netns exec`, `unshare` without --fork, `sh -c
        'exec'`), so the pid Popen gives is the program's own and signals reach it.
        """
        return [
            _binary("ip"), "netns", "exec", self.namespace(host),
            _binary("unshare"), "--uts",
            "sh", "-c", 'hostname "$0" && exec "$@"', host,
        ]  # fmt: skip

    def reach(self, host: str) -> Callable[[Callable[[], Any]], Any]:
        """A function `run(fn) -> fn()` that calls `fn` on a thread living in `host`'s
        network namespace: a client made there (requests, redis-py) talks as `host`."""
        namespace = self.namespace(host)
        if not self.is_open:
            raise BedError("the bed is not open")
        if host not in self._reach:
            self._reach[host] = HostThreads(namespace, host)
        return self._reach[host]

    def pids(self, host: str) -> set[int]:
        """The processes running on `host`."""
        return pids_in([self.namespace(host)])

    # -- partitions ---------------------------------------------------------------------

    def cut(self, host: str, peer: str | None = None) -> None:
        """Cut `host` off the bed (its port at the switch goes down), or, given `peer`,
        only the link between the two. Packets are lost, not refused: TCP retransmits and
        reads time out, as when a cable is pulled. A program on `host` still reaches the
        others on `host` itself (its own address, its loopback)."""
        if peer is None:
            ip("-n", self.switch, "link", "set", self._port(host), "down")
            self._cut.add(host)
            return
        # Between two hosts only: each believes the other is at a hardware address no
        # interface has, so the switch delivers what they send each other to no one.
        for one, other in ((host, peer), (peer, host)):
            ip("-n", self.namespace(one), "neigh", "replace", self.address(other),
               "lladdr", NOWHERE_MAC, "nud", "permanent", "dev", "eth0")  # fmt: skip
        self._cut.add(frozenset((host, peer)))

    def heal(self, host: str, peer: str | None = None) -> None:
        """Undo `cut(host, peer)`."""
        if peer is None:
            ip("-n", self.switch, "link", "set", self._port(host), "up")
            self._cut.discard(host)
            return
        for one, other in ((host, peer), (peer, host)):
            # Forgotten: the next packet asks again (ARP) and finds the real one.
            ip("-n", self.namespace(one), "neigh", "del", self.address(other), "dev", "eth0")
        self._cut.discard(frozenset((host, peer)))

    def is_cut(self, host: str, peer: str | None = None) -> bool:
        """Whether `cut(host, peer)` is in force."""
        self._check(host)
        return (host if peer is None else frozenset((host, peer))) in self._cut

    @contextlib.contextmanager
    def partitioned(self, host: str, peer: str | None = None) -> Iterator[None]:
        """`cut(host, peer)` for the duration of the `with` block."""
        self.cut(host, peer)
        try:
            yield
        finally:
            self.heal(host, peer)
