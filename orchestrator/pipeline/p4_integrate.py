"""The default `p4-integrate` pipeline (DESIGN §4): stages, their commands and how each
reads p4's output (docs/p4-behaviour.md). Rules shared by all stages (lost agents, timeouts,
refused connections, expired tickets) are applied first, in rules.py.

vars written here: source_change, branch_sources, branch_targets, change, integrate_followup,
resolve_as, resolve_am, conflicts, opened_count, name_check_offenders, submitted_change.
"""

from __future__ import annotations

from typing import Any

from orchestrator.pipeline import p4cmd, p4parse
from orchestrator.pipeline.model import (
    PASSWORD_SECRET,
    BuildError,
    CommandResult,
    CommandSpec,
    JobContext,
    Outcome,
    OutcomeKind,
    Pipeline,
    RetryPolicy,
    Stage,
    fail,
    next_,
    repeat,
)
from orchestrator.pipeline.namecheck import find_offenders
from orchestrator.pipeline.paths import matches
from orchestrator.pipeline.steps import Plan, Step, make_stage

LOGIN = "LOGIN"
_CHANGE = ("change",)


def _failed(what: str, result: CommandResult) -> Outcome:
    return fail(f"{what} failed (exit {result.exit_code})", p4parse.error_line(result.stderr, result.stdout))


def _both(result: CommandResult) -> str:
    return result.stdout + "\n" + result.stderr


def _opened_records(what: str, result: CommandResult) -> list[dict[str, str]] | Outcome:
    """Records of `p4 -ztag opened`, or the failure: every file must be seen, so a truncated
    listing is refused rather than checked in part."""
    if result.exit_code != 0:
        return _failed(what, result)
    if result.truncated:
        return fail(
            f"{what}: the list of opened files was too long to capture whole, so it "
            f"cannot be checked; raise the agent's capture_bytes"
        )
    records = [r for r in p4parse.parse_ztag(result.stdout) if "depotFile" in r]
    if not records:
        return fail(
            f"{what}: no opened files where some were expected", p4parse.error_line(result.stderr, result.stdout)
        )
    return records


def _opened_paths(what: str, result: CommandResult) -> list[str] | Outcome:
    records = _opened_records(what, result)
    return records if isinstance(records, Outcome) else [r["depotFile"] for r in records]


def _source_change(ctx: JobContext) -> int | None:
    return ctx.params.change or ctx.vars.get("source_change")


# ---------------------------------------------------------------------------- LOGIN


def _login(ctx: JobContext) -> CommandSpec:
    password = ctx.secrets.get(PASSWORD_SECRET)
    if password is None:
        raise BuildError(
            f"workspace {ctx.params.workspace.name!r} is configured with a password, "
            f"but the orchestrator supplied none (secret {PASSWORD_SECRET!r})"
        )
    return p4cmd.p4(ctx, "login", stdin=password.encode() + b"\n", secret=True)


def _login_done(ctx: JobContext, result: CommandResult) -> Outcome:
    # A rejected password is never retried: repeating it can lock the account.
    if result.exit_code != 0:
        return _failed("p4 login", result)
    return next_(p4parse.last_line(result.stdout))


def _login_plan(ctx: JobContext) -> list[Step]:
    return [Step(_login, _login_done)] if ctx.params.workspace.password_set else []


# ---------------------------------------------------------------------------- GET_LATEST_CL


def _branch_view(ctx: JobContext) -> CommandSpec:
    spec = ctx.params.branch_spec
    assert spec is not None, "planned only for a branch-spec job"
    return p4cmd.p4(ctx, "-ztag", "branch", "-o", spec)


def _branch_view_read(ctx: JobContext, result: CommandResult) -> Outcome:
    if result.exit_code != 0:
        return _failed("p4 branch -o", result)
    spec = p4parse.parse_ztag_spec(result.stdout)
    # `branch -o` of an unknown name prints a template; only a stored spec has Access.
    if "Access" not in spec:
        return fail(f"branch spec {ctx.params.branch_spec!r} does not exist on the server")
    pairs = p4parse.view_mappings(spec)
    if not pairs:
        return fail(f"branch spec {ctx.params.branch_spec!r} has no view mappings")
    return repeat(
        f"branch {ctx.params.branch_spec}: {len(pairs)} mapping(s)",
        branch_sources=[s for s, _ in pairs],
        branch_targets=[t for _, t in pairs],
    )


def _latest_change(ctx: JobContext) -> CommandSpec:
    sources = ctx.vars.get("branch_sources") or [ctx.params.source]
    return p4cmd.p4(ctx, "-ztag", "changes", "-m1", "-s", "submitted", *sources)


def _latest_change_read(ctx: JobContext, result: CommandResult) -> Outcome:
    if result.exit_code != 0:
        return _failed("p4 changes", result)
    records = [r for r in p4parse.parse_ztag(result.stdout) if r.get("change", "").isdigit()]
    if not records:
        return fail("the source has no submitted changes", p4parse.error_line(result.stderr, result.stdout))
    latest = records[0]
    return next_(
        f"Change {latest['change']} by {latest.get('user', '?')}@{latest.get('client', '?')}",
        source_change=int(latest["change"]),
    )


def _latest_plan(ctx: JobContext) -> list[Step]:
    # A branch spec's view also tells SYNC and INTEGRATE the target paths, so it is read
    # even when the source change is given.
    steps = [Step(_branch_view, _branch_view_read)] if ctx.params.branch_spec else []
    if ctx.params.change is None:
        steps.append(Step(_latest_change, _latest_change_read))
    return steps


# ---------------------------------------------------------------------------- SYNC


def _targets(ctx: JobContext) -> list[str]:
    return [ctx.params.target] if ctx.params.target else list(ctx.vars.get("branch_targets", []))


def _sync(ctx: JobContext) -> CommandSpec:
    return p4cmd.p4(ctx, "sync", *_targets(ctx))


def _sync_read(ctx: JobContext, result: CommandResult) -> Outcome:
    # Output may be truncated in the middle; failures (`Can't clobber writable file`) end
    # the sync, so they are in the tail. "file(s) up-to-date" is a warning with exit 0.
    if result.exit_code != 0:
        return _failed("p4 sync", result)
    return next_(p4parse.last_line(result.stderr) or p4parse.last_line(result.stdout))


# ---------------------------------------------------------------------------- CREATE_CHANGE


def _description(ctx: JobContext) -> str:
    if ctx.params.desc.strip():
        return ctx.params.desc
    what = (
        f"branch {ctx.params.branch_spec}" if ctx.params.branch_spec else f"{ctx.params.source} to {ctx.params.target}"
    )
    at = f" at change {_source_change(ctx)}" if _source_change(ctx) else ""
    job = f" (p4bus job {ctx.job_id})" if ctx.job_id else ""
    return f"Integrate {what}{at}{job}"


def change_spec(ctx: JobContext) -> str:
    ws = ctx.params.workspace
    # Every description line is tab-indented, so no line of it can start another field.
    body = "\n".join("\t" + line for line in _description(ctx).splitlines())
    return f"Change:\tnew\n\nClient:\t{ws.p4client}\n\nUser:\t{ws.p4user}\n\nStatus:\tnew\n\nDescription:\n{body}\n"


def _create_change(ctx: JobContext) -> CommandSpec:
    return p4cmd.p4(ctx, "change", "-i", stdin=change_spec(ctx).encode())


def _create_change_read(ctx: JobContext, result: CommandResult) -> Outcome:
    if result.exit_code != 0:
        return _failed("p4 change -i", result)
    number = p4parse.created_change(result.stdout)
    if number is None:
        return fail("p4 change -i did not report a change number", p4parse.last_line(result.stdout))
    return next_(p4parse.contains(result.stdout, "created") or "", change=number)


# ---------------------------------------------------------------------------- INTEGRATE

_OPENED_ACTIONS = (" - integrate from ", " - branch/sync from ", " - delete from ")
_ALREADY_OPENED = "can't integrate (already opened on this client)"


def _integrate(ctx: JobContext) -> CommandSpec:
    cl = _source_change(ctx)
    at = f"@{cl}" if cl else ""
    if ctx.params.branch_spec:
        # With -b, `toFile@N` limits the *source* revisions to change N.
        pins = [t + at for t in _targets(ctx)] if at else []
        return p4cmd.p4(ctx, "integrate", "-c", p4cmd.change(ctx), "-b", ctx.params.branch_spec, *pins)
    source, target = ctx.params.source, ctx.params.target
    assert source is not None and target is not None, "validation requires both without a branch spec"
    return p4cmd.p4(ctx, "integrate", "-c", p4cmd.change(ctx), source + at, target)


def _integrate_read(ctx: JobContext, result: CommandResult) -> Outcome:
    if result.exit_code != 0:
        return _failed("p4 integrate", result)
    text = _both(result)
    opened_any = any(action in text for action in _OPENED_ACTIONS)
    if not opened_any and (line := p4parse.contains(text, "already integrated")):
        return repeat(line, integrate_followup="delete_change")
    if not opened_any and (line := p4parse.contains(text, "no such file(s)")):
        return fail("the source has no files at that change", line)
    if not opened_any and (line := p4parse.contains(text, "no target file(s) in branch view")):
        return fail("the branch view maps no target files", line)
    if line := p4parse.contains(text, _ALREADY_OPENED):
        # Ours from an earlier attempt (retried, or the agent was lost), or someone else's:
        # look before going on.
        return repeat(line, integrate_followup="check_opened")
    return next_(p4parse.last_line(result.stdout), integrate_followup=None)


def _delete_change(ctx: JobContext) -> CommandSpec:
    return p4cmd.p4(ctx, "change", "-d", p4cmd.change(ctx))


def _delete_change_read(ctx: JobContext, result: CommandResult) -> Outcome:
    text = _both(result)
    if line := p4parse.contains(text, "open file(s)"):
        # The change is not empty after all (the integrate output was cut short): go on.
        return next_(line, integrate_followup=None)
    deleted = p4parse.contains(text, "deleted") or p4parse.contains(text, "unknown")
    reason = "" if deleted else f"the empty pending change {ctx.vars['change']} could not be deleted"
    return Outcome(
        kind=OutcomeKind.NOTHING_TO_DO,
        reason=reason,
        key_line=deleted or p4parse.error_line(result.stderr, result.stdout),
    )


def _check_opened(ctx: JobContext) -> CommandSpec:
    return p4cmd.p4(ctx, "-ztag", "opened", *_targets(ctx))


def _check_opened_read(ctx: JobContext, result: CommandResult) -> Outcome:
    records = _opened_records("p4 opened", result)
    if isinstance(records, Outcome):
        return records
    change = p4cmd.change(ctx)
    for record in records:
        if record.get("change") != change:
            return fail(
                f"{record.get('depotFile')} is already opened on this client in change "
                f"{record.get('change')}: revert it or submit that change, then retry",
                record.get("depotFile", ""),
            )
    return next_(f"target files already opened in change {change}", integrate_followup=None)


_INTEGRATE_FOLLOWUPS = {
    "delete_change": Step(_delete_change, _delete_change_read),
    "check_opened": Step(_check_opened, _check_opened_read),
}


def _integrate_plan(ctx: JobContext) -> list[Step]:
    followup = ctx.vars.get("integrate_followup")
    return [Step(_integrate, _integrate_read)] + ([_INTEGRATE_FOLLOWUPS[followup]] if followup else [])


# ---------------------------------------------------------------------------- RESOLVE


def _resolve_pass(flag: str) -> Plan:
    def build(ctx: JobContext) -> CommandSpec:
        return p4cmd.p4(ctx, "resolve", flag, "-c", p4cmd.change(ctx))

    def read(ctx: JobContext, result: CommandResult) -> Outcome:
        # `resolve -am` exits 0 while skipping conflicts: NEEDS_RESOLVE finds those.
        if result.exit_code != 0:
            return _failed(f"p4 resolve {flag}", result)
        counts = p4parse.resolve_results(result.stdout)
        summary = ", ".join(f"{n} {what}" for what, n in counts.items() if n)
        line = p4parse.contains(_both(result), "no file(s) to resolve") or summary
        return next_(line, **{f"resolve{flag.replace('-', '_')}": counts})

    return lambda ctx: [Step(build, read)]


def _pending(ctx: JobContext) -> CommandSpec:
    return p4cmd.p4(ctx, "-ztag", "resolve", "-n", "-c", p4cmd.change(ctx))


def _pending_read(ctx: JobContext, result: CommandResult) -> Outcome:
    if result.exit_code != 0:
        return _failed("p4 resolve -n", result)
    files = p4parse.pending_resolves(result.stdout)
    if not files:
        return next_(p4parse.contains(_both(result), "no file(s) to resolve") or "nothing to resolve", conflicts=[])
    more = " (list cut short)" if result.truncated else ""
    return Outcome(
        kind=OutcomeKind.WAIT_RESOLVE,
        conflicts=files,
        reason=f"{len(files)} file(s) need a person to resolve{more}",
        key_line=f"{files[0]} - needs resolve",
    )


# ---------------------------------------------------------------------------- PRE_SUBMIT


def _opened(ctx: JobContext) -> CommandSpec:
    return p4cmd.p4(ctx, "-ztag", "opened", "-c", p4cmd.change(ctx))


def _blocklist_read(ctx: JobContext, result: CommandResult) -> Outcome:
    paths = _opened_paths("p4 opened", result)
    if isinstance(paths, Outcome):
        return paths
    ws = ctx.params.workspace
    lists = (("the site blocklist", ctx.site.blocklist), (f"workspace {ws.name}'s blocklist", ws.blocklist))
    for path in paths:
        for which, patterns in lists:
            for pattern in patterns:
                if matches(pattern, path):
                    return fail(f"{path} is blocked by {which} ({pattern})", path)
    return repeat(f"{len(paths)} opened file(s), none blocked", opened_count=len(paths))


def _hook_step(template: list[str]) -> Step:
    def read(ctx: JobContext, result: CommandResult) -> Outcome:
        if result.exit_code != 0:
            return fail(
                f"pre-submit command {' '.join(p4cmd.expand(template, ctx))} exited {result.exit_code}",
                p4parse.last_line(result.stderr) or p4parse.last_line(result.stdout),
            )
        return repeat(p4parse.last_line(result.stdout))

    return Step(lambda ctx: p4cmd.site_command(ctx, template), read)


def _pre_submit_plan(ctx: JobContext) -> list[Step]:
    return [Step(_opened, _blocklist_read)] + [_hook_step(t) for t in ctx.site.pre_submit]


# ---------------------------------------------------------------------------- SHELVE


def _shelve(ctx: JobContext) -> CommandSpec:
    return p4cmd.p4(ctx, "shelve", "-f", "-c", p4cmd.change(ctx))


def _shelve_read(ctx: JobContext, result: CommandResult) -> Outcome:
    text = _both(result)
    if "validation failed" in text:
        # The trigger's own line says what is wrong; the generic one follows it.
        trigger = next((line.strip() for line in text.splitlines() if "validation failed:" in line), None)
        return fail(
            "a server trigger rejected the shelve", trigger or p4parse.contains(text, "validation failed") or ""
        )
    if result.exit_code != 0:
        return _failed("p4 shelve", result)
    return next_(p4parse.contains(result.stdout, "files shelved") or p4parse.last_line(result.stdout))


# ---------------------------------------------------------------------------- NC_FIX

_OFFENDERS = "name_check_offenders"


def _offenders_found(ctx: JobContext, offenders: list[dict[str, str]]) -> Outcome:
    first = offenders[0]
    return repeat(
        f"{first['path']}: {first['reason']}" + (f" (+{len(offenders) - 1} more)" if len(offenders) > 1 else ""),
        **{_OFFENDERS: offenders},
    )


def _builtin_check_read(ctx: JobContext, result: CommandResult) -> Outcome:
    paths = _opened_paths("p4 opened", result)
    if isinstance(paths, Outcome):
        return paths
    offenders = [o._asdict() for o in find_offenders(paths, ctx.site.name_check_policy)]
    if not offenders:
        return next_(f"name check: {len(paths)} file(s) pass", **{_OFFENDERS: []})
    if len(offenders) == len(paths):
        return fail(
            "every opened file fails the name check; nothing would be left to submit",
            f"{offenders[0]['path']}: {offenders[0]['reason']}",
        )
    return _offenders_found(ctx, offenders)


def _external_template(ctx: JobContext) -> list[str]:
    template = ctx.site.name_check
    assert isinstance(template, list), "planned only when the site's name check is a command"
    return template


def _external_check(ctx: JobContext) -> CommandSpec:
    return p4cmd.site_command(ctx, _external_template(ctx))


def _external_check_read(ctx: JobContext, result: CommandResult) -> Outcome:
    command = p4cmd.expand(_external_template(ctx), ctx)[0]
    if result.exit_code == 0:
        return next_(f"name check: {command} found nothing", **{_OFFENDERS: []})
    paths = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("//")]
    if result.exit_code != 1 or not paths:
        return fail(
            f"name check command {command} failed (exit {result.exit_code})",
            p4parse.error_line(result.stderr, result.stdout),
        )
    return _offenders_found(ctx, [{"path": p, "reason": f"rejected by {command}"} for p in paths])


def _revert_offenders(ctx: JobContext) -> CommandSpec:
    return p4cmd.p4(ctx, "revert", "-c", p4cmd.change(ctx), *(o["path"] for o in ctx.vars[_OFFENDERS]))


def _revert_read(ctx: JobContext, result: CommandResult) -> Outcome:
    if result.exit_code != 0:
        return _failed("p4 revert", result)
    return repeat(p4parse.last_line(result.stdout))


def _reshelve(ctx: JobContext) -> CommandSpec:
    # -r replaces the whole shelf with what is opened now; -f would leave the reverted
    # offenders in the shelf.
    return p4cmd.p4(ctx, "shelve", "-r", "-c", p4cmd.change(ctx))


def _name_check_plan(ctx: JobContext) -> list[Step]:
    check = (
        Step(_opened, _builtin_check_read)
        if ctx.site.name_check == "builtin"
        else Step(_external_check, _external_check_read)
    )
    fix = [Step(_revert_offenders, _revert_read), Step(_reshelve, _shelve_read)]
    return [check] + (fix if ctx.vars.get(_OFFENDERS) else [])


# ---------------------------------------------------------------------------- P4PUSH


def _delete_shelf(ctx: JobContext) -> CommandSpec:
    return p4cmd.p4(ctx, "shelve", "-d", "-c", p4cmd.change(ctx))


def _delete_shelf_read(ctx: JobContext, result: CommandResult) -> Outcome:
    # Already gone is fine: a retry after a lost agent finds it deleted.
    gone = p4parse.contains(_both(result), "no shelved files")
    if result.exit_code != 0 and not gone:
        return _failed("p4 shelve -d", result)
    return repeat(gone or p4parse.last_line(result.stdout))


def _push(ctx: JobContext) -> CommandSpec:
    return p4cmd.site_command(ctx, ctx.site.push)


def _push_read(ctx: JobContext, result: CommandResult) -> Outcome:
    text = _both(result)
    if submitted := p4parse.submitted_change(text):
        number, submitted_line = submitted
        return Outcome(kind=OutcomeKind.DONE, key_line=submitted_line, updates={"submitted_change": number})
    if line := p4parse.contains(text, "merges still pending"):
        # Something changed in the workspace since RESOLVE_CHECK. A person fixes this the way
        # they fix a conflict, and resume re-runs every check from RESOLVE_CHECK on.
        return Outcome(
            kind=OutcomeKind.WAIT_RESOLVE,
            conflicts=p4parse.must_resolve(text),
            reason="the submit found files that still need resolving",
            key_line=line,
        )
    if line := p4parse.contains(text, "out of date files"):
        return fail(
            "target files changed since the sync: run p4 sync and p4 resolve in the "
            "workspace, then retry from RESOLVE_CHECK",
            line,
        )
    if result.exit_code != 0:
        if ctx.attempt > 1 and (line := p4parse.contains(text, "unknown")):
            return fail(
                f"change {ctx.vars['change']} no longer exists: an earlier attempt may "
                f"have submitted it; check p4 changes before retrying",
                line,
            )
        return _failed(p4cmd.expand(ctx.site.push, ctx)[0] + " (push)", result)
    # The push exited 0, so it happened; the site's command just did not print p4's line.
    return Outcome(
        kind=OutcomeKind.DONE,
        key_line=p4parse.last_line(result.stdout),
        reason="the push did not report a submitted change number",
        updates={"submitted_change": None},
    )


def _push_plan(ctx: JobContext) -> list[Step]:
    # p4 refuses to submit a change that has shelved files; a site push tool may want them.
    delete = [Step(_delete_shelf, _delete_shelf_read)] if p4cmd.is_p4_submit(ctx, ctx.site.push) else []
    return delete + [Step(_push, _push_read)]


# ---------------------------------------------------------------------------- cleanup


def cleanup(ctx: JobContext) -> list[CommandSpec]:
    """Undo a cancelled job's pending change (best effort; each may fail if nothing is there)."""
    if "change" not in ctx.vars:
        return []
    n = p4cmd.change(ctx)
    return [
        p4cmd.p4(ctx, "revert", "-c", n, "//..."),
        p4cmd.p4(ctx, "shelve", "-d", "-c", n),
        p4cmd.p4(ctx, "change", "-d", n),
    ]


# ---------------------------------------------------------------------------- the pipeline

_READ = RetryPolicy(max_attempts=3, backoff_s=5.0)
_WRITE = RetryPolicy(max_attempts=3, backoff_s=10.0)
# A lost submit may have succeeded; running it again cannot tell, so a person decides.
_SUBMIT = RetryPolicy(max_attempts=2, backoff_s=10.0, on_lost="fail")


def _stage(name: str, plan: Plan, retry: RetryPolicy, timeout: float, **flags: Any) -> Stage:
    return make_stage(name, plan, retry=retry, timeout=timeout, login_stage=None if name == LOGIN else LOGIN, **flags)


def _build_pipeline() -> Pipeline:
    stages = (
        _stage(LOGIN, _login_plan, _READ, 60),
        _stage("GET_LATEST_CL", _latest_plan, _READ, 300, provides=("source_change",)),
        _stage("SYNC", lambda ctx: [Step(_sync, _sync_read)], _WRITE, 4 * 3600),
        _stage("CREATE_CHANGE", lambda ctx: [Step(_create_change, _create_change_read)], _WRITE, 120, provides=_CHANGE),
        _stage("INTEGRATE", _integrate_plan, _WRITE, 3600, needs=_CHANGE),
        _stage("RESOLVE_PASS_1", _resolve_pass("-as"), _WRITE, 3600, needs=_CHANGE),
        _stage("RESOLVE_PASS_2", _resolve_pass("-am"), _WRITE, 3600, needs=_CHANGE),
        _stage("NEEDS_RESOLVE", lambda ctx: [Step(_pending, _pending_read)], _READ, 600, needs=_CHANGE),
        _stage(
            "RESOLVE_CHECK", lambda ctx: [Step(_pending, _pending_read)], _READ, 600, needs=_CHANGE, resume_only=True
        ),
        _stage("PRE_SUBMIT", _pre_submit_plan, _READ, 4 * 3600, needs=_CHANGE),
        _stage("SHELVE", lambda ctx: [Step(_shelve, _shelve_read)], _WRITE, 3600, needs=_CHANGE),
        _stage("NC_FIX", _name_check_plan, _WRITE, 1800, needs=_CHANGE),
        _stage("P4PUSH", _push_plan, _SUBMIT, 3600, needs=_CHANGE),
    )
    return Pipeline(name="p4-integrate", stages=stages, resume_stage="RESOLVE_CHECK", cleanup=cleanup)


P4_INTEGRATE = _build_pipeline()
