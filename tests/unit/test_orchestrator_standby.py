"""A standby's side of the API (orchestrator/standby.py): what it answers, what it refuses."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import msgspec
import pytest

from common import protocol as P
from orchestrator.engine import JobError
from orchestrator.lease import FileLease, LeaseLost
from orchestrator.standby import CHECK_S, Role


def _requests() -> list[type[P.Base]]:
    members: list[type[P.Base]] = []
    for t in get_args(P.OrchestratorRequest):
        members += list(get_args(t)) or [t]
    return members


def _sample(cls: type[P.Base]) -> P.Base:
    """The request with its required fields filled in (values do not matter to the role)."""
    fields = {f.name: f.type for f in msgspec.structs.fields(cls) if f.required}
    values = {"req_id": "r1", "job_id": "j1", "name": "t1"}
    sample: dict[str, object] = {}
    for name, typ in fields.items():
        if name in values:
            sample[name] = values[name]
        elif typ is P.Template:
            sample[name] = P.Template(name="t1")
        elif typ is P.Schedule:
            sample[name] = P.Schedule(name="s1", template="t1")
        else:
            sample[name] = ""
    return msgspec.convert(sample, cls, strict=False)


def test_every_read_is_an_orchestrator_request() -> None:
    assert set(P.ORCHESTRATOR_READS) <= set(_requests())


@pytest.mark.parametrize("cls", _requests(), ids=lambda c: c.__name__)
def test_a_standby_answers_reads_and_refuses_everything_else_naming_itself(tmp_path: Path, cls: type[P.Base]) -> None:
    role = Role(FileLease(tmp_path / "lease"), "orchestrator-h1")
    msg = _sample(cls)
    if cls in P.ORCHESTRATOR_READS:
        role.refuse_writes(msg)  # type: ignore[arg-type]
    else:
        with pytest.raises(JobError) as err:
            role.refuse_writes(msg)  # type: ignore[arg-type]
        assert err.value.code == "standby"
        assert "orchestrator-h1 is a standby" in str(err.value) and cls.__struct_config__.tag in str(err.value)
    role.active = True
    role.refuse_writes(msg)  # type: ignore[arg-type]


def test_the_active_one_checks_its_lease_once_a_second(tmp_path: Path) -> None:
    now = [100.0]
    lease = FileLease(tmp_path / "lease")
    role = Role(lease, "o", clock=lambda: now[0])
    assert role._take() and role.name == "active"
    role.check()
    lease._fd = None  # as if it were gone (a flock cannot be lost while the process lives)
    now[0] += CHECK_S / 2
    role.check()  # not asked yet
    now[0] += CHECK_S
    with pytest.raises(LeaseLost):
        role.check()
