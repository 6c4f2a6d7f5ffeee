"""The uwsgi_app role's preflight refuses a drain task file it could not include.

Every other input is set to a valid value, so only the drain file decides.
"""

import pytest
from preflight import run_uwsgi_app_preflight


def preflight(tmp_path, drain_tasks):
    return run_uwsgi_app_preflight(tmp_path, uwsgi_app_drain_tasks=drain_tasks)


def test_no_drain_file_passes(tmp_path):
    run = preflight(tmp_path, "")
    assert run.returncode == 0, run.stdout[-2000:]


def test_an_existing_absolute_drain_file_passes(tmp_path):
    drain = tmp_path / "drain.yml"
    drain.write_text("---\n[]\n")
    run = preflight(tmp_path, str(drain))
    assert run.returncode == 0, run.stdout[-2000:]


@pytest.mark.parametrize("path", ["playbooks/tasks/drain.yml", "/nonexistent/drain.yml"])
def test_a_relative_or_missing_drain_file_is_refused(tmp_path, path):
    run = preflight(tmp_path, path)
    assert run.returncode != 0
    assert "uwsgi_app_drain_tasks is" in run.stdout, run.stdout[-2000:]
