"""Run one role's tasks/preflight.yml with ansible-playbook on the controller (no host needed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLAYBOOK = """\
- name: Run the {role} preflight alone
  hosts: localhost
  gather_facts: {gather_facts}
  tasks:
    - name: Check the inputs
      ansible.builtin.include_role:
        name: {role}
        tasks_from: preflight.yml
"""
# localhost is also the one app host, so the nginx role has an upstream to resolve.
INVENTORY = """\
all:
  children:
    app:
      hosts:
        localhost:
          ansible_connection: local
          ansible_python_interpreter: "{{ ansible_playbook_python }}"
          uwsgi_app_listen_address: 10.0.0.5
"""


def run_preflight(tmp_path: Path, role: str, extra: dict, gather_facts: bool = False):
    (tmp_path / "play.yml").write_text(PLAYBOOK.format(role=role, gather_facts=gather_facts))
    (tmp_path / "hosts.yml").write_text(INVENTORY)
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    env.pop("ANSIBLE_FORCE_COLOR", None)
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            str(tmp_path / "hosts.yml"),
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
