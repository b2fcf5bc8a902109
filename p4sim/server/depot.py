"""Writing submitted history: new revisions and their integration records.

Shared by `submit` and by the seeder, which builds histories without running p4 commands.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from p4sim.server.store import Store

FILE_TYPE = "text"


@dataclass(frozen=True)
class NewRevision:
    file: str
    action: str  # add | edit | delete | integrate | branch
    content: bytes | None  # None for delete


@dataclass(frozen=True)
class IntegRecord:
    to_file: str
    from_file: str
    start_rev: int  # source revisions start_rev+1 .. end_rev were integrated
    end_rev: int
    how: str  # branch from | copy from | merge from | ignored | edit from | delete from


def add_revisions(
    store: Store, change: int, revisions: list[NewRevision], integs: Iterable[IntegRecord] = (), when: int | None = None
) -> dict[str, int]:
    """Append one revision per file in `change`; returns file -> its new revision number."""
    when = when or int(time.time())
    heads = _head_revs(store, [r.file for r in revisions])
    digests = store.put_blobs(r.content for r in revisions if r.content is not None)
    digest_iter = iter(digests)
    rows, new_revs = [], {}
    for r in revisions:
        digest = next(digest_iter) if r.content is not None else None
        rev = heads.get(r.file, 0) + 1
        new_revs[r.file] = rev
        rows.append(
            (r.file, rev, r.action, change, FILE_TYPE, digest, len(r.content) if r.content is not None else 0, when)
        )
    store.add_revs(rows)
    store.add_integs(
        (i.to_file, new_revs[i.to_file], i.from_file, i.start_rev, i.end_rev, i.how, change) for i in integs
    )
    return new_revs


def _head_revs(store: Store, files: list[str]) -> dict[str, int]:
    if len(files) > 50:  # many files: one range scan per common directory beats one query each
        prefixes = {f.rsplit("/", 1)[0] + "/" for f in files}
        heads = store.heads(prefixes)
        return {f: heads[f]["rev"] for f in files if f in heads}
    found = {}
    for f in files:
        row = store.head(f)
        if row is not None:
            found[f] = row["rev"]
    return found
