"""uWSGI's options live once, in the uwsgi_app role (vars/main.yml): the role's template renders
them, and app/uwsgi.ini (uWSGI by hand, and the app's own tests) is written from them."""

import subprocess
import sys

from preflight import ROOT


def test_app_uwsgi_ini_is_written_from_the_roles_options():
    run = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "uwsgi_ini.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
