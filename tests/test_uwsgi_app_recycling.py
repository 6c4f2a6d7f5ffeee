"""A lone worker is not recycled by request count: while it restarts nothing of its instance
answers (uWSGI's master notices the exit within its 1 s check, then the app loads; the bench
lost requests to it, bench/results/served-overhead-amx.md). Instances of several workers keep
max-requests, and an operator may ask for it on a lone worker too. Rendered on the controller
into tmp_path, as tasks/configure.yml renders them on a host."""

import re

from preflight import run_uwsgi_app_render

LAYOUT = """\
    - name: Plan the {name} instance
      ansible.builtin.include_role: {{name: segserve.fleet.uwsgi_app, tasks_from: plan.yml}}
      vars: &{name}
        uwsgi_app_device: cpu
        uwsgi_app_processes: {processes}
        uwsgi_app_recycle_single_worker: {recycle}
        uwsgi_app_config_dir: "{out}/{name}"
    - name: Render the {name} instance
      ansible.builtin.include_role: {{name: segserve.fleet.uwsgi_app, tasks_from: configure.yml}}
      vars: *{name}
"""
PLAY = """\
- name: Render the service's files for instances of one and several workers
  hosts: localhost
  gather_facts: true
  roles:
    - role: segserve.fleet.segserve
  tasks:
{layouts}"""
INSTANCES = {
    "lone": {"processes": 1, "recycle": "false"},
    "pair": {"processes": 2, "recycle": "false"},
    "lone_recycled": {"processes": 1, "recycle": "true"},
}


def test_only_instances_of_several_workers_recycle_by_count(tmp_path):
    for name in INSTANCES:
        (tmp_path / name).mkdir()
    text = "".join(
        LAYOUT.format(name=name, out=tmp_path, **values) for name, values in INSTANCES.items()
    )
    run = run_uwsgi_app_render(tmp_path, PLAY.format(layouts=text))
    assert run.returncode == 0, run.stdout[-3000:]

    def option(name, key):
        ini = (tmp_path / name / "uwsgi.ini").read_text()
        return int(re.search(rf"^{key} = (\d+)$", ini, re.M).group(1))

    assert option("lone", "processes") == 1
    assert option("lone", "max-requests") == 0  # uWSGI: 0 never recycles by count
    assert option("lone", "reload-on-rss") == 2048  # memory still recycles it
    assert option("pair", "processes") == 2
    assert option("pair", "max-requests") == 5000
    assert option("lone_recycled", "max-requests") == 5000
