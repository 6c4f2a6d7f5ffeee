#!/usr/bin/env python3
"""Print a meta/argument_specs.yml skeleton from a role's defaults/main.yml.

Defaults stay in defaults/main.yml only (one place, no drift). Each input's description
is the comment block above it in defaults; its type is guessed
from the default value. Review the output (choices, element types) before committing it.
Usage: tools/gen_argument_specs.py roles/NAME
"""

import sys
from pathlib import Path

import yaml


def comments_by_key(text: str) -> dict[str, str]:
    found, pending, last = {}, [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# ---"):
            pending = []
        elif stripped.startswith("#"):
            pending.append(stripped.lstrip("# ").strip())
        elif line and not line[0].isspace() and ":" in line:
            # A key right under another shares its comment (e.g. user and group).
            found[line.split(":", 1)[0]] = " ".join(pending) or last
            last = found[line.split(":", 1)[0]]
            pending = []
        elif not stripped:
            pending, last = [], ""
    return found


def type_of(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "dict"
    return "str"


def main(role: Path) -> None:
    text = (role / "defaults" / "main.yml").read_text()
    defaults = yaml.safe_load(text)
    notes = comments_by_key(text)
    options = {}
    for key, value in defaults.items():
        spec = {"type": type_of(value), "description": notes.get(key, "")}
        if spec["type"] == "list":
            spec["elements"] = "str"
        options[key] = spec
    doc = {
        "argument_specs": {
            "main": {"short_description": f"The {role.name} role", "options": options}
        }
    }
    print("---")
    print(yaml.safe_dump(doc, sort_keys=False, width=100), end="")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
