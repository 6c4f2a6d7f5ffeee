"""The nginx role's preflight refuses a body buffer size nginx could not use."""

import pytest
from preflight import run_preflight


def preflight(tmp_path, buffer_bytes):
    # Facts: the preflight checks the OS family (this controller is Debian, as the hosts).
    extra = {"nginx_client_body_buffer_bytes": buffer_bytes}
    return run_preflight(tmp_path, "nginx", extra, gather_facts=True)


def test_a_positive_body_buffer_passes(tmp_path):
    run = preflight(tmp_path, 16384)
    assert run.returncode == 0, run.stdout[-2000:]


@pytest.mark.parametrize("size", [0, -1])
def test_a_zero_or_negative_body_buffer_is_refused(tmp_path, size):
    run = preflight(tmp_path, size)
    assert run.returncode != 0
    assert "Sizes, timeouts, counts and worker settings" in run.stdout, run.stdout[-2000:]
