"""The role's documented interface stays in step: every default has a spec (its type and
description, never a second copy of the default), and every spec has a default. Runs on the
controller (no host needed)."""

from pathlib import Path

import yaml

testinfra_hosts = ["nginx-lb1"]

ROLE = Path(__file__).resolve().parents[3] / "roles" / "nginx"


def load(relative):
    return yaml.safe_load((ROLE / relative).read_text())


def test_defaults_and_argument_specs_match():
    # Each default lives in defaults/main.yml alone; the spec gives its type and description.
    defaults = load("defaults/main.yml")
    options = load("meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    assert sorted(defaults) == sorted(options)
    for name, spec in options.items():
        assert "default" not in spec, name
        assert spec.get("description"), name


def test_inputs_are_prefixed():
    assert all(name.startswith("nginx_") for name in load("defaults/main.yml"))
    assert all(name.startswith("__nginx_") for name in load("vars/main.yml"))
    assert all(name.startswith("__nginx_") for name in load("vars/Debian.yml"))
