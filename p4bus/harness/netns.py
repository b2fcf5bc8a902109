"""Hosts as Linux network namespaces on one private switch, for tests (and bench/chaos).

Every host is a namespace with one interface, ``eth0``, whose other end is a port of a bridge
that lives in a namespace of its own (the switch). Addresses are in ``SUBNET`` and exist only
inside these namespaces: the machine's own namespace gets no interface, address or route, so
test traffic cannot leave them. Names carry the creating process's pid and a random tag, so
runs never collide, and a run that crashed is swept by the next one (``sweep_stale``).

A link is cut by taking the host's switch port down (as if its cable were pulled at the switch)
and impaired on both of its ends (so both directions suffer).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

SUBNET = "10.213.0"  # a /24; .1, .2, ... in the order the hosts are named
NAME_PREFIX = "p4b-"
NETNS_DIR = Path("/run/netns")
IP_TIMEOUT_S = 10.0
# htb wants a rate on every class; this one is high enough never to be the limit.
UNLIMITED_KBIT = 10_000_000


class NetnsError(RuntimeError):
    """A namespace, link or qdisc could not be made or changed; the message has ip/tc's words."""


class ImpairmentUnavailable(NetnsError):
    """This kernel lacks the queueing discipline an impairment needs (e.g. no sch_netem)."""


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can (checked by making one)."""
    if os.geteuid() != 0:
        return "network namespaces need root (run the netns tests as root, e.g. in CI's container)"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "`ip` and `tc` (iproute2) are not installed"
    probe = f"{NAME_PREFIX}{os.getpid()}-{secrets.token_hex(2)}-probe"
    try:
        _ip("netns", "add", probe)
    except NetnsError as exc:
        return f"cannot create a network namespace: {exc}"
    _ip("netns", "del", probe)
    return None


def sweep_stale() -> list[str]:
    """Delete namespaces of ours whose creating process is gone; returns their names."""
    gone = []
    for entry in sorted(NETNS_DIR.glob(f"{NAME_PREFIX}*")) if NETNS_DIR.is_dir() else []:
        pid = entry.name[len(NAME_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _ip("netns", "del", entry.name)
            gone.append(entry.name)
    return gone


@dataclass(frozen=True)
class Host:
    name: str
    ns: str
    address: str
    port: str  # its link's name on the switch

    def prefix(self) -> tuple[str, ...]:
        """argv prefix that runs a command on this host (``ip netns exec`` execs the command)."""
        return ("ip", "netns", "exec", self.ns)


class Network:
    """A switch and one namespace per host name; a context manager that removes all of it."""

    def __init__(self, hosts: Iterable[str]) -> None:
        names = list(hosts)
        if not names or len(names) > 250 or len(set(names)) != len(names):
            raise ValueError(f"hosts must be 1 to 250 distinct names, got {names!r}")
        self.tag = f"{NAME_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.switch = f"{self.tag}-switch"
        # Port names are the switch's own (its namespace), so p1, p2, ... cannot clash.
        self.hosts = {
            name: Host(name, f"{self.tag}-{name}", f"{SUBNET}.{i}", f"p{i}") for i, name in enumerate(names, start=1)
        }
        self._made: list[str] = []

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __enter__(self) -> Network:
        try:
            self._create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.destroy()

    def _create(self) -> None:
        self._netns(self.switch)
        _ip("-n", self.switch, "link", "add", "name", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for h in self.hosts.values():
            self._netns(h.ns)
            _ip("-n", self.switch, "link", "add", "name", h.port, "type", "veth", "peer", "name", "eth0", "netns", h.ns)
            _ip("-n", self.switch, "link", "set", h.port, "master", "br0", "up")
            _ip("-n", h.ns, "addr", "add", f"{h.address}/24", "dev", "eth0")
            _ip("-n", h.ns, "link", "set", "eth0", "up")

    def _netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def destroy(self) -> None:
        """Delete every namespace made (their links go with them); safe to call twice.

        Processes still running in a namespace keep it alive until they exit, unreachable."""
        while self._made:
            try:
                _ip("netns", "del", self._made[-1])
            except NetnsError:
                pass  # already gone: the end state is the one wanted
            self._made.pop()

    # ------------------------------------------------------------------ commands on hosts
    def run(
        self, host: str, *argv: str, timeout: float = 30.0, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on ``host`` and wait for it; its output is captured as text."""
        return subprocess.run(
            [*self.hosts[host].prefix(), *argv], capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd
        )

    def listening(self, host: str) -> set[str]:
        """``address:port`` of every TCP socket listening on ``host``."""
        out = self.run(host, "ss", "-Hltn").stdout
        return {line.split()[3] for line in out.splitlines() if line.strip()}

    # ------------------------------------------------------------------ the host's link
    def cut(self, host: str) -> None:
        """Pull the host's cable at the switch: nothing passes either way until ``heal``."""
        _ip("-n", self.switch, "link", "set", self.hosts[host].port, "down")

    def heal(self, host: str) -> None:
        _ip("-n", self.switch, "link", "set", self.hosts[host].port, "up")

    def _ends(self, host: str) -> list[tuple[str, str]]:
        h = self.hosts[host]
        return [(h.ns, "eth0"), (self.switch, h.port)]

    def netem(self, host: str, *args: str) -> None:
        """``tc ... netem ARGS`` (e.g. "delay", "50ms", "loss", "2%") on both ends of the link."""
        for ns, dev in self._ends(host):
            _tc(ns, "qdisc", "replace", "dev", dev, "root", "netem", *args)

    def lossy(self, host: str, loss: float, rate_kbit: int = UNLIMITED_KBIT) -> None:
        """Drop each packet with probability ``loss`` and rate-limit to ``rate_kbit``, both ways.

        For kernels without netem: an htb token bucket (class 1:10, the rate limit; its queue
        adds latency when the link is busy) and a drop class (1:20: a pfifo of length 0), with
        a classic-BPF classifier that sends a packet to 1:20 when a random u32 is below
        ``loss`` * 2^32 (cls_bpf's return value is the class id)."""
        if not 0.0 <= loss < 1.0:
            raise ValueError(f"loss is a probability in [0, 1), got {loss}")
        threshold = int(loss * 2**32)
        keep, drop = 0x10010, 0x10020  # 1:10 and 1:20 (tc writes class minors in hex)
        # ld rand; jge threshold ? keep : drop
        program = f"4,32 0 0 {0xFFFFF000 + 56},53 0 1 {threshold},6 0 0 {keep},6 0 0 {drop}"
        for ns, dev in self._ends(host):
            _tc(ns, "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "10")
            _tc(ns, "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate", f"{rate_kbit}kbit")
            _tc(ns, "class", "add", "dev", dev, "parent", "1:", "classid", "1:20", "htb", "rate", f"{rate_kbit}kbit")
            _tc(ns, "qdisc", "add", "dev", dev, "parent", "1:20", "handle", "20:", "pfifo", "limit", "0")
            _tc(ns, "filter", "add", "dev", dev, "parent", "1:", "bpf", "bytecode", program)

    def clear(self, host: str) -> None:
        """Remove the host's impairments (back to the links' default queueing)."""
        for ns, dev in self._ends(host):
            subprocess.run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], capture_output=True, check=False)

    def dropped(self, host: str) -> int:
        """Packets the impairment on the host's link dropped so far, both directions."""
        total = 0
        for ns, dev in self._ends(host):
            for q in json.loads(_tc(ns, "-s", "-j", "qdisc", "show", "dev", dev) or "[]"):
                if q.get("root"):
                    total += int(q.get("drops", 0))
        return total


def _ip(*args: str) -> str:
    return _run("ip", *args)


def _tc(ns: str, *args: str) -> str:
    try:
        return _run("tc", "-n", ns, *args)
    except NetnsError as exc:
        if "qdisc kind is unknown" in str(exc):
            raise ImpairmentUnavailable(f"this kernel has no such queueing discipline: {exc}") from None
        raise


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout
