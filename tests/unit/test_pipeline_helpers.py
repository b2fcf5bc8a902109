"""Shared builders for the pipeline tests (no tests here)."""

from __future__ import annotations

from typing import Any

from orchestrator.pipeline import (
    PIPELINES,
    CommandResult,
    CommandSpec,
    JobContext,
    JobParams,
    Outcome,
    SiteConfig,
    Workspace,
)

PIPELINE = PIPELINES["p4-integrate"]
PASSWORD = "s3cret-pw"


def workspace(**overrides: Any) -> Workspace:
    fields = {
        "name": "ws1",
        "p4port": "ssl:p4.example.com:1666",
        "p4user": "bob",
        "p4client": "bob-rel",
        "root": "/work/ws1",
        "tickets_file": "/var/p4bus/tickets",
    }
    return Workspace(**{**fields, **overrides})


def params(**overrides: Any) -> JobParams:
    fields: dict[str, Any] = {"workspace": workspace(), "source": "//depot/main/...", "target": "//depot/rel/..."}
    return JobParams(**{**fields, **overrides})


def ctx(
    stage: str,
    step: int = 0,
    attempt: int = 1,
    vars: dict | None = None,
    site: SiteConfig | None = None,
    password: bool = False,
    **param_overrides: Any,
) -> JobContext:
    if password:
        param_overrides.setdefault("workspace", workspace(password_set=True))
    return JobContext(
        params=params(**param_overrides),
        site=site or SiteConfig(),
        stage=stage,
        step=step,
        attempt=attempt,
        vars={"change": 123, "source_change": 7} if vars is None else vars,
        job_id="INT-20261128-0007",
        secrets={"p4passwd": PASSWORD} if password else {},
    )


def ok(stdout: str = "", stderr: str = "", **kw: Any) -> CommandResult:
    return CommandResult(exit_code=0, stdout=stdout, stderr=stderr, **kw)


def err(stderr: str, stdout: str = "", code: int = 1) -> CommandResult:
    return CommandResult(exit_code=code, stdout=stdout, stderr=stderr)


def interpret(stage: str, result: CommandResult, **ctx_kw: Any) -> Outcome:
    c = ctx(stage, **ctx_kw)
    return PIPELINE.stage(stage).interpret(c, result)


def build(stage: str, **ctx_kw: Any) -> CommandSpec | None:
    return PIPELINE.stage(stage).build(ctx(stage, **ctx_kw))


CONNECTION_REFUSED = (
    "Perforce client error:\n"
    "\tConnect to server failed; check $P4PORT.\n"
    "\tTCP connect to p4.example.com:1666 failed.\n"
    "\tconnect: 10.0.0.5:1666: Connection refused\n"
)
