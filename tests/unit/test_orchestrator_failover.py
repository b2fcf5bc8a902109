"""OrchestratorClient against several orchestrators: real ROUTER sockets that answer as an
active orchestrator, as a standby, or not at all (orchestrator/standby.py is the real one's side;
tests/e2e/test_standby.py runs the real processes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import zmq

from common import ids, roles, zmqutil
from common import protocol as P
from common.rpc import HEDGE_S, OrchestratorClient, RequestError

pytestmark = pytest.mark.timeout(30)

JOB = P.JobView(
    job_id="j1", state="QUEUED", stage="", pipeline="integrate", workspace="ws", created_at=0.0, updated_at=0.0
)


class FakeOrchestrator:
    """A ROUTER on a loopback port; ``answer(request) -> reply or None`` (None: stay silent)."""

    def __init__(self, answer: Callable[[P.Base], P.Base | None]) -> None:
        self.answer = answer
        self.endpoint = f"tcp://127.0.0.1:{zmqutil.free_port()}"
        self.received: list[P.Base] = []
        self._sock = zmqutil.router(zmq.Context.instance(), self.endpoint, None, roles.ORCHESTRATOR_API)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if self._sock.poll(20):
                identity, frame = self._sock.recv_multipart()
                req = P.decode(frame, P.OrchestratorRequest)
                self.received.append(req)
                reply = self.answer(req)
                if reply is not None:
                    self._sock.send_multipart([identity, P.encode(reply)])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close(linger=0)


def active(req: P.Base) -> P.Base:
    assert isinstance(req, P.Request)
    if isinstance(req, P.Ping):
        return P.Pong(req_id=req.req_id, source="active", role="active")
    return P.JobReply(req_id=req.req_id, job=JOB)


def standby(req: P.Base) -> P.Base:
    assert isinstance(req, P.Request)
    if isinstance(req, P.ORCHESTRATOR_READS):
        return active(req) if not isinstance(req, P.Ping) else P.Pong(req_id=req.req_id, source="sb", role="standby")
    return P.ErrorReply(req_id=req.req_id, code="standby", message="a standby")


def silent(req: P.Base) -> None:
    return None


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[P.Base], P.Base | None]], FakeOrchestrator]]:
    made: list[FakeOrchestrator] = []

    def make(answer: Callable[[P.Base], P.Base | None]) -> FakeOrchestrator:
        made.append(FakeOrchestrator(answer))
        return made[-1]

    yield make
    for f in made:
        f.close()


def _resume(oc: OrchestratorClient) -> P.JobView:
    return oc.request(P.Resume(req_id=ids.new_id("r"), job_id="j1")).job


def test_a_write_goes_past_a_standby_to_the_active_one_and_the_client_remembers_it(serve) -> None:
    sb, act = serve(standby), serve(active)
    with OrchestratorClient([sb.endpoint, act.endpoint], None, timeout=5.0) as oc:
        assert _resume(oc).job_id == "j1"
        assert [type(r) for r in act.received] == [P.Resume]
        assert all(isinstance(r, P.Resume) for r in sb.received) and len(sb.received) <= 1
        asked_standby = len(sb.received)
        assert _resume(oc).job_id == "j1"
        assert len(sb.received) == asked_standby  # the second went straight to the active one
        assert len(act.received) == 2


def test_a_dead_orchestrator_costs_no_timeout(serve) -> None:
    act = serve(active)
    dead = f"tcp://127.0.0.1:{zmqutil.free_port()}"  # nothing listens there
    with OrchestratorClient([dead, act.endpoint], None, timeout=5.0) as oc:
        t0 = time.monotonic()
        assert oc.job("j1").job_id == "j1"
        assert _resume(oc).job_id == "j1"
        assert time.monotonic() - t0 < 2.0


def test_a_read_unanswered_is_also_asked_of_the_next_one(serve) -> None:
    hung, sb = serve(silent), serve(standby)
    with OrchestratorClient([hung.endpoint, sb.endpoint], None, timeout=5.0) as oc:
        oc._current = 0
        # Both connected, so the read goes to the preferred (hung) one first.
        zmqutil_wait_connected(oc)
        t0 = time.monotonic()
        assert oc.job("j1").job_id == "j1"
        took = time.monotonic() - t0
    assert HEDGE_S * 0.9 <= took < HEDGE_S + 2.0
    assert [type(r) for r in hung.received] == [P.GetJob] and [type(r) for r in sb.received] == [P.GetJob]


def test_a_write_unanswered_is_not_sent_again_and_the_error_says_it_may_have_been_done(serve) -> None:
    hung, act = serve(silent), serve(active)
    with OrchestratorClient([hung.endpoint, act.endpoint], None, timeout=1.5) as oc:
        oc._current = 0
        zmqutil_wait_connected(oc)
        with pytest.raises(RequestError) as err:
            _resume(oc)
    assert err.value.code == "timeout"
    assert "may have carried out the request" in err.value.message
    assert len(hung.received) == 1 and act.received == []


def test_a_standby_taking_over_is_a_pause_for_a_write(serve) -> None:
    refusals = 3

    def becomes_active(req: P.Base) -> P.Base:
        nonlocal refusals
        if isinstance(req, P.Resume) and refusals > 0:
            refusals -= 1
            return standby(req)
        return active(req)

    sb = serve(becomes_active)
    dead = f"tcp://127.0.0.1:{zmqutil.free_port()}"
    with OrchestratorClient([dead, sb.endpoint], None, timeout=5.0) as oc:
        assert _resume(oc).job_id == "j1"
    assert refusals == 0 and len(sb.received) == 4


def test_only_standbys_or_nobody_is_a_timeout_naming_them(serve) -> None:
    sb = serve(standby)
    dead = f"tcp://127.0.0.1:{zmqutil.free_port()}"
    with OrchestratorClient([dead, sb.endpoint], None, timeout=1.0) as oc:
        with pytest.raises(RequestError) as err:
            _resume(oc)
        assert err.value.code == "timeout"
        assert f"{sb.endpoint} answered as standby" in err.value.message
        assert oc.job("j1").job_id == "j1"  # a standby answers reads
    nobody = [dead, f"tcp://127.0.0.1:{zmqutil.free_port()}"]
    with OrchestratorClient(nobody, None, timeout=0.5) as oc, pytest.raises(RequestError, match="none answered"):
        oc.job("j1")


def test_one_endpoint_keeps_the_plain_client_and_a_standby_refusal_is_an_error(serve) -> None:
    sb = serve(standby)
    with OrchestratorClient([sb.endpoint], None, timeout=5.0) as oc:
        assert oc.ping().role == "standby"
        with pytest.raises(RequestError) as err:
            _resume(oc)
    assert err.value.code == "standby"


def zmqutil_wait_connected(oc: OrchestratorClient) -> None:
    """Until every endpoint's socket has a completed connection (so the preferred one is chosen)."""
    deadline = time.monotonic() + 10
    for e in oc.endpoints:
        sock = oc._sock(e)
        while not sock.poll(50, zmq.POLLOUT):
            assert time.monotonic() < deadline, f"{e} never connected"
