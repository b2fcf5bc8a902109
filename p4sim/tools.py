"""The p4sim-only subcommands: `p4sim init`, `p4sim seed` and `p4sim shim`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import p4sim

SHIM = """#!{python} -S
# p4 -> p4sim shim written by `p4sim shim`. -S skips site.py: p4sim needs only the standard
# library, and each p4 invocation starts measurably faster without it.
import sys
sys.path.insert(0, {package_parent!r})
from p4sim.cli import main
sys.exit(main())
"""


def write_shim(directory: Path) -> Path:
    """Create DIRECTORY/p4 running this interpreter's p4sim, so `p4 ...` works with it on PATH."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "p4"
    package_parent = str(Path(p4sim.__file__).resolve().parent.parent)
    target.write_text(SHIM.format(python=sys.executable, package_parent=package_parent))
    target.chmod(0o755)
    return target


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="p4sim", description="p4sim tools (any other command runs as p4)")
    sub = parser.add_subparsers(dest="tool", required=True)
    seed_p = sub.add_parser("seed", help="build a server and workspace for a scenario")
    seed_p.add_argument("dir", type=Path)
    seed_p.add_argument("--scenario", default="clean", help="clean | conflict | nothing-to-do | big:N")
    seed_p.add_argument("--password", default=None, help="give user bob this password")
    seed_p.add_argument("--json", action="store_true", help="print the connection facts as JSON")
    shim_p = sub.add_parser("shim", help="write DIR/p4 so that p4 runs p4sim")
    shim_p.add_argument("dir", type=Path)
    init_p = sub.add_parser("init", help="create an empty server in DIR (P4PORT=sim:DIR)")
    init_p.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    if args.tool == "shim":
        print(write_shim(args.dir))
        return 0
    if args.tool == "init":
        return init(args.dir)
    from p4sim.seed import seed

    try:
        facts = seed(args.dir, args.scenario, args.password)
    except ValueError as e:
        print(f"p4sim seed: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(facts))
    else:
        for key in ("P4PORT", "P4USER", "P4CLIENT"):
            print(f"export {key}={facts[key]}")
    return 0


def init(directory: Path) -> int:
    """An empty server in DIRECTORY (idempotent); prints its P4PORT."""
    from p4sim.server.store import Store

    root = directory.resolve()
    Store(str(root), create=True).close()
    print(f"P4PORT=sim:{root}")
    return 0
