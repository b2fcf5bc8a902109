"""The data a pipeline works with: commands, their results, job parameters, site policy,
the context a stage sees, and the outcome an interpreter returns.

Records that are configured or persisted are msgspec Structs (so the orchestrator can decode
them from TOML/JSON and store them); the ones holding callables or secrets are dataclasses.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from typing import Any, Literal

import msgspec

# ---------------------------------------------------------------------------- commands


class CommandSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What one stage step runs on an agent. argv only: agents never use a shell."""

    argv: list[str]
    stdin: bytes | None = None
    # True for the `p4 login` password: the orchestrator must not persist or log stdin.
    stdin_secret: bool = False
    env: dict[str, str] = {}
    cwd: str | None = None
    timeout: float | None = None

    def __repr__(self) -> str:
        # A spec is the kind of value that ends up in a log line or a test failure message.
        stdin = "<secret>" if self.stdin_secret and self.stdin is not None else repr(self.stdin)
        return (
            f"CommandSpec(argv={self.argv!r}, stdin={stdin}, env={self.env!r}, "
            f"cwd={self.cwd!r}, timeout={self.timeout!r})"
        )

    def for_storage(self) -> CommandSpec:
        """The spec as it may be persisted or published: a secret stdin removed.

        After a restart the orchestrator rebuilds the secret spec by calling the stage's
        build again with the secrets supplied (builds are pure and deterministic)."""
        if not self.stdin_secret:
            return self
        return msgspec.structs.replace(self, stdin=None)


class CommandResult(msgspec.Struct, frozen=True, kw_only=True):
    """A finished (or given-up-on) command, as an interpreter sees it.

    stdout/stderr are bounded head+tail captures: `truncated` says the middle is missing, so
    interpreters that must see every line (opened-file lists) can refuse to guess."""

    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    killed: bool = False
    lost: bool = False
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False
    # The agent could not start the command at all (not allowlisted, bad cwd, exec failure).
    error: str = ""


# ---------------------------------------------------------------------------- job parameters


class Workspace(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    p4port: str
    p4user: str
    p4client: str
    root: str
    p4: str = "p4"
    # The password itself never lives here: see JobContext.secrets.
    password_set: bool = False
    tickets_file: str | None = None
    env: dict[str, str] = {}
    # Depot path patterns this workspace's jobs may not submit, besides the site's blocklist.
    blocklist: list[str] = []
    # A person approves the shelved change (`p4bus approve`) before it is submitted.
    review_before_submit: bool = False


class JobParams(msgspec.Struct, frozen=True, kw_only=True):
    workspace: Workspace
    source: str | None = None
    target: str | None = None
    branch_spec: str | None = None
    change: int | None = None  # the source change to integrate up to; None = latest
    desc: str = ""
    submitted_by: str = ""  # the key that asked, or the person the web authenticated


# ---------------------------------------------------------------------------- site policy

WINDOWS_RESERVED_NAMES = (
    "CON",
    "PRN",
    "AUX",
    "NUL",
    *(f"COM{i}" for i in range(1, 10)),
    *(f"LPT{i}" for i in range(1, 10)),
)


class NameCheckPolicy(msgspec.Struct, frozen=True, kw_only=True):
    illegal_chars: str = "@#%*"
    reserved_names: list[str] = msgspec.field(default_factory=lambda: list(WINDOWS_RESERVED_NAMES))
    case_collisions: bool = True


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    max_attempts: int = 3
    backoff_s: float = 5.0
    factor: float = 2.0
    # A command on an agent that died may or may not have run; "fail" for stages where
    # running twice is worse than stopping (submit).
    on_lost: Literal["retry", "fail"] = "retry"
    # How long a command may stay UNKNOWN (its agent unreachable, so it may still be running)
    # before the job gives up on it and on_lost applies; None: orchestrator.unknown_deadline_s.
    unknown_deadline_s: float | None = None

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt `attempt + 1`, after `attempt` failed ones."""
        return self.backoff_s * self.factor ** max(attempt - 1, 0)


DEFAULT_PUSH = ("p4", "submit", "-c", "{change}")


class SiteConfig(msgspec.Struct, frozen=True, kw_only=True):
    # argv templates; {change} and {workspace} are substituted, nothing else.
    pre_submit: list[list[str]] = []
    # depot path patterns with p4 wildcards (... and *)
    blocklist: list[str] = []
    # "builtin", or the argv template of a command that prints offending depot paths one per
    # line and exits 1 when there are any, 0 when there are none.
    name_check: Literal["builtin"] | list[str] = "builtin"
    name_check_policy: NameCheckPolicy = msgspec.field(default_factory=NameCheckPolicy)
    push: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_PUSH))
    retry: dict[str, RetryPolicy] = {}  # stage name -> policy replacing the stage's default

    def policy_for(self, stage: str, default: RetryPolicy) -> RetryPolicy:
        return self.retry.get(stage, default)


# ---------------------------------------------------------------------------- context

PASSWORD_SECRET = "p4passwd"


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobContext:
    """Everything a builder or interpreter may look at. Built fresh by the orchestrator from
    the stored job for each call; `vars` is read-only here (changes travel as Outcome.updates).
    """

    params: JobParams
    site: SiteConfig
    stage: str
    step: int = 0
    attempt: int = 1
    vars: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    job_id: str = ""
    # Secrets (PASSWORD_SECRET) come from the orchestrator's configuration at call time and
    # are never part of vars, so nothing a transition returns for persisting can hold them.
    secrets: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False)

    def at(self, stage: str, step: int, attempt: int, vars: Mapping[str, Any]) -> JobContext:
        return dataclasses.replace(self, stage=stage, step=step, attempt=attempt, vars=vars)


# ---------------------------------------------------------------------------- outcomes


class OutcomeKind(enum.StrEnum):
    NEXT = "NEXT"  # stage finished: go to `goto`, or back from a call, or the next stage
    REPEAT = "REPEAT"  # step finished: run step + 1; if the stage has none, the stage finished
    WAIT_RESOLVE = "WAIT_RESOLVE"
    NOTHING_TO_DO = "NOTHING_TO_DO"
    DONE = "DONE"
    RETRY = "RETRY"  # transient: the same step again after backoff, while attempts remain
    # An effect check found the step's effect missing: run the step itself now (same attempt).
    RERUN = "RERUN"
    FAIL = "FAIL"


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    kind: OutcomeKind
    updates: dict[str, Any] = {}
    reason: str = ""
    key_line: str = ""
    goto: str | None = None
    # With goto: run `goto` like a subroutine and come back to the start of this stage when
    # it finishes (used to log in again when a ticket expires mid-job).
    come_back: bool = False
    conflicts: list[str] = []


def next_(key_line: str = "", **updates: Any) -> Outcome:
    return Outcome(kind=OutcomeKind.NEXT, key_line=key_line, updates=updates)


def repeat(key_line: str = "", **updates: Any) -> Outcome:
    return Outcome(kind=OutcomeKind.REPEAT, key_line=key_line, updates=updates)


def fail(reason: str, key_line: str = "") -> Outcome:
    return Outcome(kind=OutcomeKind.FAIL, reason=reason, key_line=key_line)


def retry(reason: str, key_line: str = "") -> Outcome:
    return Outcome(kind=OutcomeKind.RETRY, reason=reason, key_line=key_line)


def rerun(key_line: str) -> Outcome:
    return Outcome(kind=OutcomeKind.RERUN, key_line=key_line)


# ---------------------------------------------------------------------------- stages

Builder = Callable[[JobContext], CommandSpec | None]
Interpreter = Callable[[JobContext, CommandResult], Outcome]


class BuildError(Exception):
    """A builder cannot produce a command (a missing secret or earlier result). The message
    is the job's failure reason."""


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    # Returns the command for ctx.step, or None: at step 0 the stage is skipped, after that
    # the stage has no more steps and is finished.
    build: Builder
    interpret: Interpreter
    retry: RetryPolicy
    timeout: float
    # vars this stage reads that an earlier stage provides: `retry --from` checks them.
    needs: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    # Only entered by resume, never by advancing from the previous stage.
    resume_only: bool = False
    # True when the job must wait for a person's approval (`p4bus approve`) before this stage.
    gate: Callable[[JobContext], bool] | None = None


@dataclasses.dataclass(frozen=True)
class Pipeline:
    name: str
    stages: tuple[Stage, ...]
    # Where `resume` of a WAITING_RESOLVE job continues.
    resume_stage: str | None = None
    # Commands that undo a job's side effects on cancel (best effort, in order).
    cleanup: Callable[[JobContext], list[CommandSpec]] = lambda ctx: []

    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def first(self) -> Stage:
        return self.stages[0]

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"pipeline {self.name} has no stage {name!r}; stages: {', '.join(self.names())}")

    def index(self, name: str) -> int:
        return self.names().index(self.stage(name).name)

    def next_after(self, name: str) -> Stage | None:
        for s in self.stages[self.index(name) + 1 :]:
            if not s.resume_only:
                return s
        return None
