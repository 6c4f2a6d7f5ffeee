"""playbooks/validate.yml passes a new user's inventory (hosts and pinned weights, nothing
else: the roles' defaults must already agree) and refuses tiers that disagree."""

from preflight import ROOT, run_playbook

# What a new user writes: one lb, two app hosts, the weights pinned.
INVENTORY = """\
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: "{{{{ ansible_playbook_python }}}}"
{extra}
  children:
    lb:
      hosts:
        lb1:
    app:
      hosts:
        app1:
        app2:
      vars:
        uwsgi_app_weights_url: https://artifacts.example.net/w.pth
        uwsgi_app_weights_sha256: "{sha}"
"""


def validate(tmp_path, **extra):
    lines = "".join(f"    {key}: {value}\n" for key, value in extra.items())
    inventory = INVENTORY.format(extra=lines.rstrip("\n"), sha="0" * 64)
    (tmp_path / "hosts.yml").write_text(inventory)
    return run_playbook(ROOT / "playbooks" / "validate.yml", tmp_path / "hosts.yml")


def test_an_inventory_of_hosts_and_weights_passes_with_the_roles_defaults(tmp_path):
    run = validate(tmp_path)
    assert run.returncode == 0, run.stdout[-3000:]


def test_one_fleet_value_moves_every_tier(tmp_path):
    # nginx's read timeout and retry window follow the harakiri; the body limits follow
    # the image limit: a changed fleet value is still a consistent fleet.
    run = validate(tmp_path, segserve_harakiri_s=200, segserve_max_image_bytes=1000)
    assert run.returncode == 0, run.stdout[-3000:]


def test_a_harakiri_above_nginx_read_timeout_is_refused(tmp_path):
    run = validate(tmp_path, uwsgi_app_harakiri_s=100)
    assert run.returncode != 0
    assert "nginx_uwsgi_read_timeout_s" in run.stdout, run.stdout[-3000:]


def test_a_retry_window_beyond_the_harakiri_is_refused(tmp_path):
    run = validate(tmp_path, nginx_upstream_next_timeout_s=0)
    assert run.returncode != 0
    assert "0 = no limit" in run.stdout, run.stdout[-3000:]


def test_body_limits_that_differ_are_refused(tmp_path):
    run = validate(tmp_path, nginx_client_max_body_bytes=2048)
    assert run.returncode != 0
    assert "one clear 413" in run.stdout, run.stdout[-3000:]


def test_a_removed_fleet_variable_is_refused_by_name(tmp_path):
    run = validate(tmp_path, segserve_proxy_timeout_s=75)
    assert run.returncode != 0
    assert "segserve_proxy_timeout_s is no longer read" in run.stdout, run.stdout[-3000:]


def test_header_buffers_larger_than_uwsgi_reads_are_refused(tmp_path):
    run = validate(tmp_path, nginx_client_header_buffer_bytes=16384)
    assert run.returncode != 0
    assert "uwsgi_app_buffer_size" in run.stdout and "would reset it" in run.stdout, run.stdout[
        -3000:
    ]


def test_a_smaller_uwsgi_buffer_is_refused_too(tmp_path):
    run = validate(tmp_path, uwsgi_app_buffer_size=16384)
    assert run.returncode != 0
    assert "would reset it" in run.stdout, run.stdout[-3000:]
