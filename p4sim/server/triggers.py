"""Server-side form triggers, configured in `<server root>/triggers.json`.

    {"name_check": {"on": ["shelve", "submit"],
                    "illegal_chars": "@#%*",
                    "reserved_names": ["CON", "NUL", "AUX", "PRN"],
                    "case_collisions": true}}

Each entry is a name-check policy (the keys are optional; the values above are the defaults).
Like a p4 change-content trigger, a violation rejects the whole shelve or submit.
"""

from __future__ import annotations

import json
import os

from p4sim import messages as msg
from p4sim.errors import P4Error
from p4sim.server.store import Store
from p4sim.view import unescape

CONFIG_NAME = "triggers.json"
DEFAULT_ILLEGAL = "@#%*"
DEFAULT_RESERVED = ["CON", "NUL", "AUX", "PRN", "COM1", "COM2", "COM3", "COM4", "LPT1", "LPT2", "LPT3"]
_FAILED_TEXT = {"shelve": msg.SHELVE_VALIDATION, "submit": msg.SUBMIT_VALIDATION}


def name_problems(policy: dict, files: list[str], store: Store) -> list[str]:
    """One line per offending depot file; empty when every name is acceptable."""
    illegal = policy.get("illegal_chars", DEFAULT_ILLEGAL)
    reserved = {n.upper() for n in policy.get("reserved_names", DEFAULT_RESERVED)}
    problems = []
    for depot in files:
        name = unescape(depot.rsplit("/", 1)[-1])
        bad = sorted({ch for ch in name if ch in illegal})
        if bad:
            problems.append(f"{depot}: illegal character(s) {' '.join(repr(c) for c in bad)}")
        stem = name.split(".", 1)[0].upper()
        if stem in reserved:
            problems.append(f"{depot}: reserved name '{stem}'")
        if policy.get("case_collisions", True):
            others = [f for f in store.files_named_like(depot) if f != depot]
            others += [f for f in files if f != depot and f.lower() == depot.lower()]
            for other in sorted(set(others)):
                problems.append(f"{depot}: differs only in case from {other}")
    return problems


def validate(store: Store, event: str, files: list[str]) -> None:
    """Run every trigger configured for `event` ('shelve' or 'submit') over the files."""
    config = os.path.join(store.root, CONFIG_NAME)
    if not os.path.exists(config):
        return
    with open(config) as f:
        policies = json.load(f)
    for name, policy in policies.items():
        if event not in policy.get("on", ["shelve", "submit"]):
            continue
        problems = name_problems(policy, files, store)
        if problems:
            raise P4Error(msg.TRIGGER_FAILED.format(name=name, output="\n".join(problems)), _FAILED_TEXT[event])
