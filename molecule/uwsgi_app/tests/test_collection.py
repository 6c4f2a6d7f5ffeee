"""The roles as an operator outside this repository gets them: the collection built with
`ansible-galaxy collection build`, installed offline into a collections path of its own, and a
playbook in another directory that deploys a wheel of the app with segserve.fleet.uwsgi_app.
Runs before test_uwsgi_app.py (file order), whose checks then read the service it deployed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
BIN = Path(sys.executable).parent
VERSION = "0.1.0+collection"

PLAYBOOK = """\
- name: Deploy the app with the installed collection
  hosts: app
  become: true
  vars:
    uwsgi_app_src: {wheel}
  roles:
    - role: segserve.fleet.segserve
    - role: segserve.fleet.uwsgi_app
"""


def run(args, cwd, env=None):
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    out = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)
    assert done.returncode == 0, f"{' '.join(map(str, args))}:\n{out[-4000:]}"
    return out


def test_the_installed_collection_deploys_a_built_wheel(host, tmp_path):
    # The collection, built and installed offline: the roles and the filter plugin, no app.
    run([BIN / "ansible-galaxy", "collection", "build", "--output-path", tmp_path], PROJECT)
    tarball = next(tmp_path.glob("segserve-fleet-*.tar.gz"))
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    assert "MANIFEST.json" in names and "roles/uwsgi_app/tasks/main.yml" in names
    assert "plugins/filter/segserve_models.py" in names and "meta/runtime.yml" in names
    assert not any(n.startswith(("app/", "molecule/", "collections")) for n in names), names
    # Only this path: the scenario's own (the checkout, linked as segserve.fleet) stays out.
    collections = tmp_path / "collections"
    env = {k: v for k, v in os.environ.items() if k not in ("ANSIBLE_FORCE_COLOR",)}
    env.update(ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_NOCOLOR="1")
    install = ["collection", "install", "--offline", "-p", collections, tarball]
    out = run([BIN / "ansible-galaxy", *install], tmp_path, env)
    version = yaml.safe_load((PROJECT / "galaxy.yml").read_text())["version"]
    assert f"segserve.fleet:{version} was installed successfully" in out, out
    assert (collections / "ansible_collections/segserve/fleet/roles/uwsgi_app").is_dir()

    # The app as a wheel built here, with another version, its lock files beside it.
    source, dist = tmp_path / "app", tmp_path / "dist"
    shutil.copytree(PROJECT / "app", source, ignore=shutil.ignore_patterns("tests", "*.egg-info"))
    pyproject = source / "pyproject.toml"
    pyproject.write_text(
        re.sub(r'(?m)^version = ".*"$', f'version = "{VERSION}"', pyproject.read_text())
    )
    build = ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, source]
    run([BIN / "pip", *build], tmp_path)
    for lock in ("requirements.lock", "requirements-cpu.lock"):
        shutil.copy(source / lock, dist / lock)
    wheel = next(dist.glob("segserve-*.whl"))

    # A playbook in another directory, with only the installed collection on its path.
    play = tmp_path / "elsewhere" / "deploy.yml"
    play.parent.mkdir()
    play.write_text(PLAYBOOK.format(wheel=json.dumps(str(wheel))))
    out = run(
        [BIN / "ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], play],
        play.parent,
        env,
    )
    assert "segserve.fleet.uwsgi_app : Install the app's wheel" in out, out[-3000:]

    installed = host.check_output(
        "/opt/segserve/venv/bin/python -c"
        " 'import importlib.metadata as m; print(m.version(\"segserve\"))'"
    )
    assert installed.strip() == VERSION
    assert host.file(f"/opt/segserve/wheel/{wheel.name}").exists
    assert not host.file("/opt/segserve/src").exists, "the host built the app from source"
    assert host.run("curl -sf http://127.0.0.1:8002/readyz").rc == 0
