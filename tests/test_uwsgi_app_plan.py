"""The uwsgi_app role's plan (tasks/plan.yml) foresees what its apply changes: it renders the
service's files on the controller and compares them with the host's, so the play drains a
host exactly when its service will restart. Run against localhost with every path in tmp_path;
localhost runs no segserve service, so the plan never restarts anything here."""

import json

from preflight import run_uwsgi_app_render

PLAY = """\
- name: Plan, configure, plan again
  hosts: localhost
  gather_facts: true
  roles:
    - role: segserve.fleet.segserve
  tasks:
    - name: Plan on a host that has nothing
      ansible.builtin.include_role: {{name: segserve.fleet.uwsgi_app, tasks_from: plan.yml}}
    - name: Keep the first plan
      ansible.builtin.copy:
        {{content: "{{{{ uwsgi_app_plan | to_json }}}}", dest: "{out}/1.json", mode: "0644"}}
    - name: Render the service's files
      ansible.builtin.include_role: {{name: segserve.fleet.uwsgi_app, tasks_from: configure.yml}}
    - name: Plan again
      ansible.builtin.include_role: {{name: segserve.fleet.uwsgi_app, tasks_from: plan.yml}}
    - name: Keep the second plan
      ansible.builtin.copy:
        {{content: "{{{{ uwsgi_app_plan | to_json }}}}", dest: "{out}/2.json", mode: "0644"}}
    - name: Plan with another harakiri
      ansible.builtin.include_role: {{name: segserve.fleet.uwsgi_app, tasks_from: plan.yml}}
      vars:
        uwsgi_app_harakiri_s: 30
    - name: Keep the third plan
      ansible.builtin.copy:
        {{content: "{{{{ uwsgi_app_plan | to_json }}}}", dest: "{out}/3.json", mode: "0644"}}
"""
RENDERED = {"a new environment", "a new uWSGI config", "a new systemd unit"}


def test_the_plan_foresees_exactly_what_configure_renders(tmp_path):
    (tmp_path / "etc").mkdir()
    run = run_uwsgi_app_render(
        tmp_path, PLAY.format(out=tmp_path), uwsgi_app_config_dir=str(tmp_path / "etc")
    )
    assert run.returncode == 0, run.stdout[-3000:]
    first, second, third = (json.loads((tmp_path / f"{n}.json").read_text()) for n in (1, 2, 3))
    # Nothing installed yet: everything is new, and nothing runs to restart. A CPU host (auto)
    # serves the converted model: it gets that, and no weights file.
    assert "new weights" not in first["changes"], first
    assert RENDERED | {"new requirements", "a new app version", "a new converted model"} <= set(
        first["changes"]
    ), first
    assert first["restart"] is False and first["running"] is False
    # Once rendered, the files match what the plan renders: no change foreseen for them.
    assert RENDERED.isdisjoint(second["changes"]), second
    # A new harakiri is a new uWSGI config, and nothing else of the rendered files.
    assert RENDERED & set(third["changes"]) == {"a new uWSGI config"}, third
    assert not (tmp_path / "restart-pending").exists()
