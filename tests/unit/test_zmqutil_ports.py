"""Port choice for stacks side by side (common/zmqutil.py)."""

import pytest

from common import zmqutil


def test_each_band_draws_only_its_own_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zmqutil, "_band", None)
    low, _ = zmqutil._ephemeral_range()
    width = (low - zmqutil.PORT_FLOOR) // 3
    zmqutil.port_band(1, 3)
    for _ in range(50):
        base = zmqutil.free_port_base(7)
        assert zmqutil.PORT_FLOOR + width <= base and base + 7 <= zmqutil.PORT_FLOOR + 2 * width
