#!/usr/bin/env python3
"""Write app/uwsgi.ini, uWSGI's settings for one machine, from the uwsgi_app role's own
options (roles/uwsgi_app/vars/main.yml, __uwsgi_app_options) at the role's default values:
the service runs the same way under the role and by hand. tests/test_uwsgi_options.py fails
when the file is out of date. Usage: tools/uwsgi_ini.py [--check]"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rolevars import ROOT, RoleVars  # noqa: E402

INI = ROOT / "app" / "uwsgi.ini"
HEADER = """\
; segserve under uWSGI on one machine, with the options the uwsgi_app role runs it with (why
; each is set: roles/uwsgi_app/vars/main.yml). Written by tools/uwsgi_ini.py: edit the role's
; options, not this file. Run from anywhere with the virtualenv's uwsgi, giving it a socket:
;
;   export SEGSERVE_WEIGHTS_PATH=/path/w.pth
;   export PROMETHEUS_MULTIPROC_DIR=$(mktemp -d)   # fresh per start: /metrics sums workers
;   uwsgi --ini app/uwsgi.ini --http-socket 127.0.0.1:8000
;
; Plain HTTP for trying it out. Behind nginx the role uses `socket` (the uwsgi protocol) on a
; private address instead: never expose that socket publicly, it can run code.
; Settings come from the environment uWSGI is started with, NOT from `env =` lines here:
; with pyuwsgi (uWSGI as a Python wheel) the interpreter exists before uWSGI parses its
; options, so variables set by `env =` never reach os.environ.
[uwsgi]
; One process per core, one torch thread each: the role computes it from the host's cores.
; The role's max-requests depends on it (none for a lone worker).
processes = {processes}
"""
# The worker count this file runs: a machine of two cores. The role's options that depend on
# the count (max-requests: none for a lone worker) are rendered for it.
PROCESSES = 2


def render() -> str:
    variables = RoleVars("segserve", "uwsgi_app", overrides={"__uwsgi_app_processes": PROCESSES})
    lines = [
        f"{name} = {variables.render(value)}"
        for option in variables.render_raw("__uwsgi_app_options")
        for name, value in option.items()
    ]
    return HEADER.format(processes=PROCESSES) + "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    args = parser.parse_args()
    text = render()
    if args.check:
        if INI.read_text() != text:
            print(f"{INI} is out of date: run tools/uwsgi_ini.py", file=sys.stderr)
            return 1
        return 0
    INI.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
