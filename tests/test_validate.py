"""playbooks/validate.yml refuses tiers that disagree: here, header buffers on the load
balancers larger than what uWSGI on the app hosts can read (nginx would pass on requests
that uWSGI resets, and count the resets against healthy hosts)."""

from preflight import ROOT, run_playbook

INVENTORY = """\
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: "{{{{ ansible_playbook_python }}}}"
    nginx_uwsgi_read_timeout_s: 75
    uwsgi_app_harakiri_s: 60
    nginx_upstream_next_timeout_s: 59
{extra}
  children:
    lb:
      hosts:
        lb1:
    app:
      hosts:
        app1:
"""


def validate(tmp_path, **extra):
    lines = "".join(f"    {key}: {value}\n" for key, value in extra.items())
    (tmp_path / "hosts.yml").write_text(INVENTORY.format(extra=lines.rstrip("\n")))
    return run_playbook(ROOT / "playbooks" / "validate.yml", tmp_path / "hosts.yml")


def test_the_roles_header_and_uwsgi_buffers_agree(tmp_path):
    run = validate(tmp_path)
    assert run.returncode == 0, run.stdout[-3000:]


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
