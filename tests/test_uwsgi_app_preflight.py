"""The uwsgi_app role's preflight refuses a drain task file it could not include.

Runs the role's own tasks/preflight.yml with ansible-playbook on the controller (no host
needed): every other input is set to a valid value, so only the drain file decides.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLAYBOOK = """\
- name: Run the uwsgi_app preflight alone
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Check the inputs
      ansible.builtin.include_role:
        name: uwsgi_app
        tasks_from: preflight.yml
"""


def preflight(tmp_path, drain_tasks):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"not read by the preflight")
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    extra = {
        "uwsgi_app_weights_src": str(weights),
        "uwsgi_app_weights_sha256": "0" * 64,
        "uwsgi_app_listen_address": "10.0.0.5",
        "uwsgi_app_drain_tasks": drain_tasks,
    }
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    env.pop("ANSIBLE_FORCE_COLOR", None)
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            str(tmp_path / "play.yml"),
            "-e",
            json.dumps(extra),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


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
