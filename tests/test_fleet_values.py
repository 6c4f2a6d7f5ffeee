"""The fleet's values have one home, roles/segserve/defaults/main.yml. Play keywords (`hosts:`,
`serial:`) are templated before any role loads, so the playbooks repeat a default there: each
such copy must equal the role's."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = yaml.safe_load((ROOT / "roles/segserve/defaults/main.yml").read_text())
COPY = re.compile(r"(segserve_\w+) \| default\(\s*'?([^')]*)'?\s*\)")


def copies():
    for path in sorted((ROOT / "playbooks").rglob("*.yml")) + [ROOT / "site.yml"]:
        for name, value in COPY.findall(path.read_text()):
            yield path.relative_to(ROOT), name, value


def test_playbooks_repeat_fleet_defaults_only_where_a_role_cannot_reach():
    found = list(copies())
    assert found, "the play patterns name their groups through segserve_* variables"
    wrong = [(str(p), n, v, DEFAULTS.get(n)) for p, n, v in found if str(DEFAULTS.get(n)) != v]
    assert wrong == [], wrong
