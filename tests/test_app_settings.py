"""The app's settings are declared once (app/src/segserve/config.py). The role passes each one
on by name (its service environment template) and the app's README table is written from the
declarations: both must agree with them."""

import re
import sys

import pytest
from preflight import ROOT
from segserve import config

sys.path.insert(0, str(ROOT / "tools"))
from rolevars import RoleVars  # noqa: E402

ENV_TEMPLATE = ROOT / "roles/uwsgi_app/templates/etc/segserve/segserve.env.j2"
PASSED = dict(re.findall(r"^SEGSERVE_(\w+)=\{\{ (\w+)", ENV_TEMPLATE.read_text(), re.M))


def test_the_role_passes_on_only_declared_settings():
    assert PASSED, "the template passes the settings on as SEGSERVE_<KEY>={{ variable }}"
    assert sorted(set(PASSED) - set(config.KNOWN)) == []


@pytest.mark.parametrize("key", sorted(PASSED))
def test_the_roles_default_is_the_apps_default(key):
    # Where the app has a default, the role's (what a fleet that sets nothing runs) is the
    # same value: one default, whichever way the service is started.
    setting = config.KNOWN[key]
    if setting.default is None:
        pytest.skip(f"{setting.env} has no default in the app: the role always sets it")
    try:
        role_value = RoleVars("segserve", "uwsgi_app")[PASSED[key]]
    except Exception as exc:  # a value from facts or lookups: decided per host
        pytest.skip(f"{PASSED[key]} is decided per host ({exc.__class__.__name__})")
    assert setting.read({key: str(role_value)}) == setting.default, PASSED[key]


def test_the_readme_table_is_written_from_the_declarations():
    readme = (ROOT / "app/README.md").read_text()
    start = readme.index("<!-- Written by `python -m segserve.config --markdown`")
    end = readme.index("<!-- end of the generated table -->")
    table = readme[readme.index("\n", start) + 1 : end].strip()
    assert table == config.markdown_table().strip(), "run: python -m segserve.config --markdown"
