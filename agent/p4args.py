"""What a p4 command line may ask of an agent (DESIGN §5; the options are in docs/p4-behaviour.md).

Allowing the executable ``p4`` must not allow everything p4 can do on the agent's host. p4
reads other files, talks to other servers and writes local files when told to; the agent's
configuration decides the server, user, client, tickets and directory of a workspace
(agent/policy.py), so a command line may not change them. Checked here, before anything runs:

- global options (before the command): only those that change how output looks or how hard p4
  tries (``SAFE_SWITCHES``, ``-r N``); every other one is refused, with the reason for the
  well-known ones (``REFUSED``). An allowlist: an option p4 gains later is refused until
  someone decides it is harmless;
- ``client -i`` / ``workspace -i``: every ``Root:`` and ``AltRoots:`` of the spec on stdin is
  inside the agent's workspace roots (p4 syncs files under them). A ``-G`` (marshalled) spec
  cannot be read safely and is refused;
- ``print -o FILE`` writes FILE: it must be inside the roots;
- ``set`` (writes settings that every later p4 command reads), ``tickets`` and ``login -p``
  (print ticket values) are refused.

Pure functions of the command line, its stdin and the roots: the caller passes how a path is
made comparable (``os.path.realpath`` here, a lexical normalisation for a remote host).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Sequence

from agent.errors import Refusal

# Executable basenames checked as p4 (p4sim stands in for it in tests).
P4_NAMES = frozenset({"p4", "p4sim"})
SAFE_SWITCHES = frozenset({"-s", "-G", "-q", "-I", "-V", "-h", "-ztag"})
SAFE_VALUED = frozenset({"-r"})  # -r retries
REFUSED = {
    "-x": "reads arguments from a file",
    "-b": "batches the arguments of -x",
    "-d": "switches the directory (and with it P4CONFIG and the client root)",
    "-p": "switches the server",
    "-u": "switches the user",
    "-c": "switches the client",
    "-P": "passes a password or ticket on the command line",
    "-H": "switches the host that tickets and the client's Host are checked against",
    "-C": "switches the character set",
    "-Q": "switches the character set",
    "-L": "switches the message language",
    "-E": "sets a p4 variable",
    "-v": "turns on debug output and tunables",
    "-z": "is allowed only as -ztag",
}
FORBIDDEN_COMMANDS = {
    "set": "writes settings (P4ENVIRO) that every later p4 command would read",
    "tickets": "prints the ticket values of the agent's user",
}
SPEC_ROOT_FIELDS = ("root", "altroots")

Normalize = Callable[[str], str]


def is_p4(*paths: str | None) -> bool:
    """True if any of ``paths`` (argv[0], the resolved executable) names p4 or p4sim."""
    return any(p and os.path.basename(p) in P4_NAMES for p in paths)


def split(args: Sequence[str]) -> tuple[list[str], str, list[str]]:
    """``[global options] command [args]`` (argv without argv[0]); Refusal for an option not
    on the allowlist."""
    i = 0
    while i < len(args) and args[i].startswith("-"):
        opt = args[i]
        if opt in SAFE_SWITCHES:
            i += 1
        elif (opt == "-z" and args[i + 1 : i + 2] == ["tag"]) or opt in SAFE_VALUED:
            i += 2
        elif opt[:2] in SAFE_VALUED and opt[2:].isdigit():
            i += 1
        else:
            why = REFUSED.get(opt[:2]) if not opt.startswith("--") else None
            raise Refusal(
                f"p4 global option {opt!r} is not allowed on this agent"
                + (f": it {why}" if why else f" (allowed: {' '.join(sorted(SAFE_SWITCHES | SAFE_VALUED))}, -z tag)")
            )
    return list(args[:i]), (args[i] if i < len(args) else ""), list(args[i + 1 :])


def check(argv: Sequence[str], stdin: bytes | None, cwd: str, roots: Sequence[str], normalize: Normalize) -> None:
    """Refusal if the p4 command line ``argv`` (argv[0] is p4) may not run; see the module doc."""
    globals_, command, args = split(argv[1:])
    if command in FORBIDDEN_COMMANDS:
        raise Refusal(f"p4 {command} is not allowed on this agent: it {FORBIDDEN_COMMANDS[command]}")
    if command == "login" and "-p" in args:
        raise Refusal("p4 login -p is not allowed on this agent: it prints a ticket")
    if command in ("client", "workspace") and any(_has_flag(a, "i") for a in args):
        if "-G" in globals_:
            raise Refusal(f"p4 -G {command} -i is not allowed on this agent: a marshalled spec cannot be checked")
        for root in spec_roots(stdin or b""):
            _inside_roots(f"{command} -i spec Root {root!r}", root, cwd, roots, normalize, absolute=True)
    if command == "print":
        for path in _option_values(args, "-o"):
            _inside_roots(f"p4 print -o {path!r}", path, cwd, roots, normalize)


def spec_roots(spec: bytes) -> list[str]:
    """The ``Root:`` and ``AltRoots:`` values of a client spec; Refusal if it has no Root."""
    values: list[str] = []
    seen_root = False
    field = ""
    for line in spec.decode("utf-8", "surrogateescape").splitlines():
        if line.startswith("#"):
            continue
        if line[:1] in (" ", "\t"):
            if field in SPEC_ROOT_FIELDS and line.strip():
                values.append(line.strip())
            continue
        name, sep, value = line.partition(":")
        field = name.strip().lower() if sep else ""
        seen_root = seen_root or field == "root"
        if field in SPEC_ROOT_FIELDS and value.strip():
            values.append(value.strip())
    if not seen_root:
        raise Refusal(
            "p4 client -i needs a spec with a Root: field on stdin (it is checked against the workspace roots)"
        )
    return [v[1:-1] if len(v) > 1 and v[0] == v[-1] == '"' else v for v in values]


def _has_flag(arg: str, letter: str) -> bool:
    # p4 takes "-f -i"; a combined "-fi" is treated as containing -i, which only means checking more.
    return arg.startswith("-") and not arg.startswith("--") and letter in arg[1:]


def _option_values(args: Sequence[str], opt: str) -> list[str]:
    out = []
    for i, a in enumerate(args):
        if a == opt and i + 1 < len(args):
            out.append(args[i + 1])
        elif a.startswith(opt) and len(a) > len(opt):
            out.append(a[len(opt) :])
    return out


def _inside_roots(
    what: str, path: str, cwd: str, roots: Sequence[str], normalize: Normalize, absolute: bool = False
) -> None:
    if absolute and not posixpath.isabs(path):
        raise Refusal(f"{what} is not an absolute path")
    real = normalize(posixpath.join(cwd, path))
    if not any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots):
        raise Refusal(f"{what} resolves to {real}, outside the workspace roots {list(roots)}")
