"""An attacker host on the same network as the bus: every socket refuses it (issue 9, item 9)."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import REPO
from tests.netns.attacker import TARGETS

pytestmark = pytest.mark.timeout(240)


@pytest.mark.parametrize("mode", ["plain", "own-key"])
def test_an_attacker_host_is_refused_on_every_socket(hosts, mode):
    hosts.workspace("ws1", "clean")
    hosts.start()
    config = str(hosts.stack.config_file())
    tried = hosts.net.run("attacker", sys.executable, "-m", "tests.netns.attacker", config, mode, cwd=REPO, timeout=120)
    assert tried.returncode == 0, tried.stderr
    assert json.loads(tried.stdout) == dict.fromkeys(TARGETS, "refused")
    # The bus still serves its own: a job from the operator on the bus host finishes.
    assert hosts.wait_state(hosts.submit("ws1")).state == "DONE"
