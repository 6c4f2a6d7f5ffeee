"""Run one task file of a role (its preflight, by default) with ansible-playbook on the
controller, against localhost."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PLAYBOOK = """\
- name: Run {tasks} of the {role} role alone
  hosts: localhost
  gather_facts: {gather_facts}
  roles:
    # The fleet's values, from which the roles' defaults derive.
    - role: segserve.fleet.segserve
  tasks:
{includes}"""
INCLUDE = """\
    - name: Run {tasks}
      ansible.builtin.include_role:
        name: segserve.fleet.{role}
        tasks_from: {tasks}
"""
# localhost is the one app host: the nginx role has an upstream to resolve, the fleet's
# default model a host to serve it, and the uwsgi_app task files run against it.
INVENTORY = """\
all:
  children:
    app:
      hosts:
        localhost:
          ansible_connection: local
          ansible_python_interpreter: "{{ ansible_playbook_python }}"
          uwsgi_app_listen_address: 10.0.0.5
          # What this repository's playbooks set (playbooks/group_vars/all/app.yml).
          uwsgi_app_src: APP_SRC
""".replace("APP_SRC", str(ROOT / "app"))


def run_preflight(tmp_path: Path, role: str, extra: dict, gather_facts: bool = False):
    return run_tasks(tmp_path, role, "preflight.yml", extra, gather_facts)


def run_tasks(
    tmp_path: Path, role: str, tasks: str | list[str], extra: dict, gather_facts: bool = False
):
    """Run one task file of a role (or several, in order) against localhost."""
    files = [tasks] if isinstance(tasks, str) else tasks
    includes = "".join(INCLUDE.format(role=role, tasks=name) for name in files)
    (tmp_path / "play.yml").write_text(
        PLAYBOOK.format(
            role=role, tasks=", ".join(files), gather_facts=gather_facts, includes=includes
        )
    )
    (tmp_path / "hosts.yml").write_text(INVENTORY)
    return run_playbook(tmp_path / "play.yml", tmp_path / "hosts.yml", extra)


def run_playbook(playbook: Path, inventory: Path, extra: dict | None = None):
    """ansible-playbook with the project's ansible.cfg and plain (uncoloured) output."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    env.pop("ANSIBLE_FORCE_COLOR", None)
    extra_args = ["-e", json.dumps(extra)] if extra else []
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            str(inventory),
            str(playbook),
            *extra_args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_uwsgi_app_preflight(tmp_path: Path, **extra):
    """The uwsgi_app preflight with a weights file and digest given, and `extra` on top."""
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"not read by the preflight")
    inputs = {"uwsgi_app_weights_src": str(weights), "uwsgi_app_weights_sha256": "0" * 64}
    return run_preflight(tmp_path, "uwsgi_app", {**inputs, **extra})


def run_uwsgi_app_render(tmp_path: Path, play: str, **extra):
    """Run `play` against localhost with every path of the uwsgi_app role under tmp_path. The
    converted model is given as built elsewhere (no conversion runs), on a controller without
    segserve-weights: only its digest is read (tests/test_uwsgi_app_artifact.py checks one)."""
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"converted model")
    (tmp_path / "play.yml").write_text(play)
    (tmp_path / "hosts.yml").write_text(INVENTORY)
    paths = {
        "uwsgi_app_home": str(tmp_path / "home"),
        "uwsgi_app_group": "root",
        "uwsgi_app_weights_src": str(weights),
        "uwsgi_app_weights_sha256": "0" * 64,
        "uwsgi_app_onnx_src": str(artifact),
        "uwsgi_app_onnx_sha256": hashlib.sha256(artifact.read_bytes()).hexdigest(),
        "uwsgi_app_controller_weights_tool": str(tmp_path / "no-segserve-weights"),
        "__uwsgi_app_unit_file": str(tmp_path / "segserve.service"),
        "__uwsgi_app_restart_marker": str(tmp_path / "restart-pending"),
    }
    return run_playbook(tmp_path / "play.yml", tmp_path / "hosts.yml", {**paths, **extra})


def render_uwsgi_app_instances(tmp_path: Path, instances: dict[str, dict]):
    """Plan and render the uwsgi_app role's files once per named instance, each with its own
    variables, into tmp_path/NAME, as tasks/configure.yml renders them on a host."""
    tasks = []
    for name, variables in instances.items():
        (tmp_path / name).mkdir()
        scoped = {**variables, "uwsgi_app_config_dir": str(tmp_path / name)}
        for step, tasks_from in (("Plan", "plan.yml"), ("Render", "configure.yml")):
            tasks.append(
                {
                    "name": f"{step} the {name} instance",
                    "ansible.builtin.include_role": {
                        "name": "segserve.fleet.uwsgi_app",
                        "tasks_from": tasks_from,
                    },
                    "vars": scoped,
                }
            )
    play = [
        {
            "name": "Render the service's files of several instances",
            "hosts": "localhost",
            "gather_facts": True,
            "roles": [{"role": "segserve.fleet.segserve"}],
            "tasks": tasks,
        }
    ]
    return run_uwsgi_app_render(tmp_path, yaml.safe_dump(play, sort_keys=False))
