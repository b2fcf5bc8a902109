"""A whole p4sim integration job through an agent whose executor is SSH ("agent mode off").

The remote host is this machine through the fixture sshd, so the p4 shim path is the same on
both sides; the remote login's HOME (set by the fixture's sshd) proves where each p4 ran."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(120)


def test_clean_job_runs_to_done_through_the_ssh_executor(jobs, sshd) -> None:
    homes = jobs.tmp / "p4-homes.log"
    p4 = jobs.bin / "p4-via-ssh"
    p4.write_text(f'#!/bin/sh\necho "$HOME" >> {homes}\nexec {jobs.bin / "p4"} "$@"\n')
    p4.chmod(0o755)
    jobs.workspace("ws1", "clean", p4=str(p4))
    jobs.stack.tree["agent"].update(
        exec_via=sshd.url(), ssh_options=sshd.options(), allowed_executables=[str(p4), "sh", "sleep"]
    )
    jobs.start()
    job_id = jobs.submit("ws1", desc="e2e through ssh")
    view = jobs.wait_state(job_id)
    assert view.state == "DONE", (view.reason, view.key_line)
    assert view.submitted_change
    ran = homes.read_text().splitlines()
    assert len(ran) == len(jobs.executions("ws1")) >= 8
    assert set(ran) == {str(sshd.key.parent / "home")}  # every p4 ran in the SSH login
