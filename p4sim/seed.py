"""Build ready-made servers for tests, demos and benchmarks (`p4sim seed DIR --scenario S`).

The history is written straight into the store (no p4 invocations), so even `big:10000` takes
seconds. Every scenario: user bob, client `ws` (Root DIR/ws, view //depot/... //ws/...),
//depot/main/... imported, branched to //depot/dev/..., then edited. Integrating dev -> main:
  clean          every file resolves with -as / -am (dev-only edits, edits in different
                 regions on both sides, an identical edit on both sides, a file added in dev)
  conflict       as clean, plus //depot/main/src/conflict.c edited differently on both sides
  nothing-to-do  dev's edits are already integrated into main
  big:N          N files edited in dev only (N to sync in main, N to integrate)
The workspace has synced nothing yet.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from p4sim.server.depot import IntegRecord, NewRevision, add_revisions
from p4sim.server.store import DB_NAME, Store

USER, CLIENT = "bob", "ws"
MAIN, DEV = "//depot/main/", "//depot/dev/"
CONFLICT_FILE = "src/conflict.c"
CLIENT_OPTIONS = "noallwrite noclobber nocompress unlocked nomodtime normdir"


def _lines(name: str, count: int) -> list[str]:
    return [f"{name} line {i}\n" for i in range(1, count + 1)]


def _edit(lines: list[str], index: int, text: str) -> list[str]:
    edited = list(lines)
    edited[index] = text
    return edited


def _text(lines: list[str]) -> bytes:
    return "".join(lines).encode()


class _History:
    """Appends submitted changes to a store, all stamped a minute apart (like a real log)."""

    def __init__(self, store: Store):
        self.store = store
        self.when = int(time.time()) - 3600

    def commit(
        self, description: str, revisions: list[NewRevision], integs: Iterable[IntegRecord] = ()
    ) -> dict[str, int]:
        self.when += 60
        change = self.store.create_change(CLIENT, USER, description + "\n", "submitted", self.when)
        return add_revisions(self.store, change, revisions, list(integs), self.when)

    def branch(self, files: list[str], description: str) -> None:
        """Branch main -> dev at main's current head revisions."""
        heads = self.store.heads([MAIN])
        revisions, integs = [], []
        for name in files:
            head = heads[MAIN + name]
            revisions.append(NewRevision(DEV + name, "branch", self.store.blob(head["digest"])))
            integs.append(IntegRecord(DEV + name, MAIN + name, 0, head["rev"], "branch from"))
        self.commit(description, revisions, integs)


def _small_history(h: _History, scenario: str) -> list[str]:
    base = {
        "README.txt": ["p4sim seeded depot\n"],
        "src/only_dev.c": _lines("only_dev", 10),
        "src/both.c": _lines("both", 20),
        "src/same.c": _lines("same", 8),
        "src/only_main.c": _lines("only_main", 6),
    }
    if scenario == "conflict":
        base[CONFLICT_FILE] = _lines("conflict", 8)
    h.commit("Initial import of main.", [NewRevision(MAIN + n, "add", _text(line)) for n, line in base.items()])
    h.branch(sorted(base), "Branch main to dev.")
    dev = {
        "src/only_dev.c": _edit(base["src/only_dev.c"], 1, "only_dev line 2 changed in dev\n"),
        "src/both.c": _edit(base["src/both.c"], 2, "both line 3 changed in dev\n"),
        "src/same.c": _edit(base["src/same.c"], 4, "same line 5 changed identically\n"),
    }
    if scenario == "conflict":
        dev[CONFLICT_FILE] = _edit(base[CONFLICT_FILE], 3, "conflict line 4 as dev wants it\n")
    edits = [NewRevision(DEV + n, "edit", _text(line)) for n, line in dev.items()]
    edits.append(NewRevision(DEV + "src/new_in_dev.c", "add", _text(_lines("new_in_dev", 5))))
    dev_revs = h.commit("Work on dev.", edits)
    if scenario == "nothing-to-do":
        # main takes dev's work verbatim: every dev revision is credited to main.
        copies = [NewRevision(MAIN + n, "integrate", _text(line)) for n, line in dev.items()]
        copies.append(NewRevision(MAIN + "src/new_in_dev.c", "branch", _text(_lines("new_in_dev", 5))))
        h.commit(
            "Integrate dev to main.",
            copies,
            [
                IntegRecord(
                    r.file,
                    DEV + r.file[len(MAIN) :],
                    0 if r.action == "branch" else 1,
                    dev_revs[DEV + r.file[len(MAIN) :]],
                    "branch from" if r.action == "branch" else "copy from",
                )
                for r in copies
            ],
        )
        return []
    main = {
        "src/both.c": _edit(base["src/both.c"], 17, "both line 18 changed in main\n"),
        "src/same.c": dev["src/same.c"],
        "src/only_main.c": _edit(base["src/only_main.c"], 0, "only_main line 1 changed in main\n"),
    }
    if scenario == "conflict":
        main[CONFLICT_FILE] = _edit(base[CONFLICT_FILE], 3, "conflict line 4 as main wants it\n")
    h.commit("Work on main.", [NewRevision(MAIN + n, "edit", _text(line)) for n, line in main.items()])
    return [MAIN + CONFLICT_FILE] if scenario == "conflict" else []


def _big_history(h: _History, count: int) -> None:
    names = [f"big/f{i:06d}.txt" for i in range(count)]
    h.commit(f"Import {count} files.", [NewRevision(MAIN + n, "add", f"{n}\nbody\n".encode()) for n in names])
    h.branch(names, "Branch main to dev.")
    h.commit(
        "Edit every file in dev.",
        [NewRevision(DEV + n, "edit", f"{n}\nbody\nchanged in dev\n".encode()) for n in names],
    )


def seed(dir: Path, scenario: str, password: str | None = None) -> dict:
    """Create DIR/server and DIR/ws for `scenario`; return the connection facts (see --json)."""
    dir = Path(dir).resolve()
    server, ws_root = dir / "server", dir / "ws"
    if (server / DB_NAME).exists():
        raise ValueError(f"{server} already holds a p4sim server")
    if scenario not in ("clean", "conflict", "nothing-to-do") and not _big_count(scenario):
        raise ValueError(f"unknown scenario {scenario!r} (clean, conflict, nothing-to-do, big:N)")
    ws_root.mkdir(parents=True, exist_ok=True)
    store = Store(str(server), create=True)
    try:
        store.begin()
        if password:
            store.set_password(USER, password)
        store.save_spec(
            "client",
            CLIENT,
            USER,
            "Created by p4sim seed.\n",
            str(ws_root),
            CLIENT_OPTIONS,
            f"//depot/... //{CLIENT}/...",
            int(time.time()),
        )
        history = _History(store)
        count = _big_count(scenario)
        conflicts = [] if count else _small_history(history, scenario)
        if count:
            _big_history(history, count)
        store.commit()
    finally:
        store.close()
    return {
        "P4PORT": f"sim:{server}",
        "P4USER": USER,
        "P4CLIENT": CLIENT,
        "root": str(ws_root),
        "source": DEV + "...",
        "target": MAIN + "...",
        "conflicts": conflicts,
    }


def _big_count(scenario: str) -> int:
    name, _, count = scenario.partition(":")
    return int(count) if name == "big" and count.isdigit() and int(count) > 0 else 0
