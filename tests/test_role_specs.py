"""Each role's argument spec and defaults describe the same inputs, and follow the naming rules."""

from pathlib import Path

import pytest
import yaml

ROLES = sorted(p for p in (Path(__file__).parent.parent / "roles").iterdir() if p.is_dir())


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_spec_and_defaults_name_the_same_inputs(role):
    defaults = set(load(role / "defaults" / "main.yml"))
    spec = load(role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert set(spec) == defaults, {
        "in defaults only": sorted(defaults - set(spec)),
        "in spec only": sorted(set(spec) - defaults),
    }


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_inputs_carry_the_role_prefix(role):
    defaults = load(role / "defaults" / "main.yml")
    assert [k for k in defaults if not k.startswith(f"{role.name}_")] == []


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_input_is_described(role):
    spec = load(role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert [k for k, v in spec.items() if not v.get("description")] == []


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_role_has_the_house_files(role):
    for rel in (
        "README.md",
        "defaults/main.yml",
        "meta/argument_specs.yml",
        "tasks/main.yml",
        "tasks/preflight.yml",
    ):
        assert (role / rel).is_file(), rel


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_specs_leave_defaults_to_the_defaults_file(role):
    # A `default:` in the spec is a second copy of defaults/main.yml, and copies drift.
    spec = load(role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert [k for k, v in spec.items() if "default" in v] == []
