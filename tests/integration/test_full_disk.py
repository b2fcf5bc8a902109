"""An agent whose spool is on a full filesystem (a 5 MiB tmpfs the test mounts; root only):
output that could not be spooled whole is flagged, a failed spool write leaves nothing that
would make a resend fail, the agent reports its free spool space, and it keeps serving."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from test_agent import Rig

from common import auth
from common import protocol as proto
from common.ids import new_id
from tests.conftest import Stack

pytestmark = pytest.mark.timeout(60)

SIZE = 5 << 20


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def rig(stack: Stack, small_fs: Path) -> Iterator[Rig]:
    ctx = zmq.Context()
    r = Rig(stack, ctx, spool_dir=str(small_fs / "spool"))
    r.spool = small_fs / "spool"
    r.start()
    yield r
    auth.stop_authenticator(ctx)
    ctx.destroy(linger=0)


def test_output_that_does_not_fit_is_flagged_and_a_resend_after_freeing_space_runs(rig: Rig) -> None:
    assert 0 < rig.master.hellos[-1].agent.spool_free <= SIZE
    big = rig.master.exec("big", ["head", "-c", str(8 << 20), "/dev/zero"])
    assert isinstance(big, proto.ExecReply)
    status = rig.sink.until_done("big").done.status
    assert status.exit_code == 0 and status.error == ""
    assert "No space left on device" in status.spool_error and "bytes not spooled" in status.spool_error
    assert status.stdout_bytes < 8 << 20
    # The result could not be written either: the agent still answers with it.
    assert rig.master.query("big").spool_error == status.spool_error
    # The disk is full: the next command is refused clearly, and nothing of it is left behind.
    req = proto.Exec(req_id=new_id("r"), cmd_id="next", spec=proto.CmdSpec(argv=["echo", "hi"]))
    refused = rig.master.request(req)
    assert isinstance(refused, proto.ErrorReply) and "No space left on device" in refused.message
    assert not (rig.spool / "next").exists()
    # Space freed: the same cmd_id runs (no "File exists" from a half-made spool entry).
    (rig.spool / "big" / "stdout").unlink()
    again = rig.master.request(proto.Exec(req_id=new_id("r"), cmd_id="next", spec=req.spec))
    assert isinstance(again, proto.ExecReply) and not again.duplicate, again
    done = rig.sink.until_done("next").done.status
    assert (done.exit_code, done.stdout, done.spool_error) == (0, b"hi\n", "")
    hb = rig.master.expect(proto.Heartbeat, auto=False)
    assert hb.spool_free is not None and hb.spool_free > 4 << 20
