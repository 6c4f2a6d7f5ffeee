"""Helpers shared by the cuda scenario's testinfra tests."""

import pytest


@pytest.fixture
def journal(host):
    """Return a function giving the last journal lines of a unit, for failure messages."""

    def _journal(unit, lines=40):
        return host.run(f"journalctl -u {unit} --no-pager -n {lines}").stdout

    return _journal
