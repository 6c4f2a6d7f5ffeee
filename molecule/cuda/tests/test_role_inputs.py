"""Controller-side checks of the role's inputs: defaults and argument spec stay in step."""

import os

import yaml

ROLE = os.path.join(os.environ.get("MOLECULE_PROJECT_DIRECTORY", "."), "roles", "cuda")


def _load(*parts):
    with open(os.path.join(ROLE, *parts), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def test_defaults_and_argument_spec_name_the_same_inputs():
    defaults = set(_load("defaults", "main.yml"))
    spec = set(_load("meta", "argument_specs.yml")["argument_specs"]["main"]["options"])
    assert defaults == spec, {
        "only in defaults": defaults - spec,
        "only in spec": spec - defaults,
    }


def test_spec_leaves_defaults_to_the_defaults_file():
    # A default in the spec would be a second copy of defaults/main.yml, free to drift.
    options = _load("meta", "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert [name for name, option in options.items() if "default" in option] == []


def test_min_driver_table_covers_torch_default():
    table = _load("vars", "main.yml")["__cuda_min_driver_for_cuda"]
    assert _load("defaults", "main.yml")["cuda_torch_cuda_version"] in table
