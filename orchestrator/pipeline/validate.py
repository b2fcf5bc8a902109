"""Submit-time validation of job parameters and site templates.

Commands never go through a shell, so these checks are not what keeps a shell out; they keep
out values that would change what p4 does (revision specifiers, extra wildcards, an option
disguised as a name) and values nobody meant to type. Every message says what is wrong,
where, and how to fix it.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from orchestrator.pipeline.model import JobParams, SiteConfig

_SHELL_CHARS = ";|&$`<>()'\"\\"
_TEMPLATE_FIELDS = {"change", "workspace"}
_SPEC_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*\Z")


def _describe(char: str) -> str:
    return {"\n": "a newline", "\r": "a carriage return", "\t": "a tab"}.get(char, repr(char))


def _depot_path_errors(field: str, flag: str, path: str) -> list[str]:
    where = f"{field} {path!r}"
    if not path.startswith("//") or len(path) < 3 or path[2] == "/":
        return [f"{where} is not a depot path: it must start with // and a depot name, e.g. {flag} //depot/main/..."]
    errors = []
    bad = sorted({c for c in path if c in _SHELL_CHARS or ord(c) < 32 or ord(c) == 127})
    if bad:
        errors.append(
            f"{where} contains {', '.join(map(_describe, bad))}: depot paths passed "
            f"to p4bus may not contain shell metacharacters, quotes or control "
            f"characters; remove them"
        )
    if "@" in path or "#" in path:
        errors.append(
            f"{where} contains a revision specifier (@ or #): give the path alone and the source change with --change N"
        )
    # Judge the rest without the revision part, which is reported above.
    path = re.split("[@#]", path, maxsplit=1)[0]
    body = path[:-4] if path.endswith("/...") else path
    if "*" in body or "..." in body or "%%" in body:
        errors.append(
            f"{where} uses a p4 wildcard (*, ... or %%N) other than a trailing "
            f"/...: name a directory as //depot/dir/... or a single file"
        )
    segments = body[2:].split("/")
    if any(s in ("", ".", "..") for s in segments):
        errors.append(
            f"{where} has an empty, '.' or '..' path segment: write the path "
            f"without //, /./, /../ after the depot name or a trailing /"
        )
    return errors


def _branch_spec_errors(name: str) -> list[str]:
    if _SPEC_NAME.match(name) and not name.isdigit():
        return []
    return [
        f"branch spec {name!r} is not a valid name: use letters, digits, '_', '.' and "
        f"'-' (not first), not only digits, e.g. --branch-spec main-to-rel"
    ]


def _change_errors(change: object) -> list[str]:
    if change is None:
        return []
    if isinstance(change, bool) or not isinstance(change, int):
        return [
            f"change {change!r} is not a number: give the source changelist as a positive integer, e.g. --change 12345"
        ]
    if change <= 0:
        return [f"change {change} is not a changelist number: changelists start at 1"]
    return []


def _what_errors(params: JobParams) -> list[str]:
    paths = params.source is not None or params.target is not None
    if params.branch_spec is not None and paths:
        return ["give either --source and --target, or --branch-spec, not both"]
    if params.branch_spec is not None:
        return _branch_spec_errors(params.branch_spec)
    source, target = params.source, params.target
    if source is None or target is None:
        missing = [flag for flag, value in (("--source", source), ("--target", target)) if value is None]
        return [
            f"missing {' and '.join(missing)}: an integration needs --source and "
            f"--target depot paths, or --branch-spec NAME"
        ]
    errors = _depot_path_errors("source", "--source", source) + _depot_path_errors("target", "--target", target)
    if params.source == params.target:
        errors.append(f"source and target are the same path {params.source!r}: integrate into a different branch")
    return errors


def validate_params(params: JobParams, known_workspaces: Collection[str] | None = None) -> list[str]:
    """Every problem with a job's parameters (empty when the job may be queued).
    `known_workspaces`: the names configured for the orchestrator; None skips that check."""
    errors = _what_errors(params) + _change_errors(params.change)
    name = params.workspace.name
    if known_workspaces is not None and name not in known_workspaces:
        known = ", ".join(sorted(known_workspaces)) or "none"
        errors.append(
            f"workspace {name!r} is not configured (known: {known}): pick one with "
            f"--workspace or add [orchestrator.workspaces.{name}] to the config"
        )
    return errors


def _template_errors(where: str, template: list[str]) -> list[str]:
    if not template or not template[0]:
        return [f'{where} is empty: give an argv list such as ["p4push", "-c", "{{change}}"]']
    unknown = sorted({f for arg in template for f in re.findall(r"\{(\w*)\}", arg)} - _TEMPLATE_FIELDS)
    if unknown:
        return [
            f"{where} uses unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)}: "
            f"only {{change}} and {{workspace}} are substituted"
        ]
    return []


def validate_site(site: SiteConfig) -> list[str]:
    """Problems with a site's command templates, for the orchestrator to report at start-up."""
    errors = _template_errors("site.push", site.push)
    for index, hook in enumerate(site.pre_submit):
        errors += _template_errors(f"site.pre_submit[{index}]", hook)
    if site.name_check != "builtin":
        errors += _template_errors("site.name_check", site.name_check)
    return errors + blocklist_errors("site.blocklist", site.blocklist)


def blocklist_errors(where: str, patterns: list[str]) -> list[str]:
    """Problems with a blocklist (the site's, or a workspace's in the orchestrator's config)."""
    return [
        f"{where} entry {pattern!r} is not a depot path pattern: write it as //depot/path/... (wildcards ... and *)"
        for pattern in patterns
        if not pattern.startswith("//")
    ]
