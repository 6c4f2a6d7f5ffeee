"""Role variables as Ansible would resolve them from the roles' own files alone: the
defaults and vars of the named roles, each value rendered with Jinja2 on first use. Values
that need facts, lookups or filters Jinja2 lacks raise instead of guessing, so a caller
only ever gets a value Ansible would also give for a host that sets nothing."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import jinja2.nativetypes
import yaml

ROOT = Path(__file__).resolve().parent.parent
_ENV = jinja2.nativetypes.NativeEnvironment(undefined=jinja2.StrictUndefined)


class RoleVars(Mapping):
    def __init__(self, *roles: str, overrides: Mapping[str, Any] | None = None):
        self._raw: dict[str, Any] = {}
        for role in roles:
            for part in ("defaults", "vars"):
                path = ROOT / "roles" / role / part / "main.yml"
                if path.is_file():
                    self._raw.update(yaml.safe_load(path.read_text()) or {})
        self._raw.update(overrides or {})

    def __getitem__(self, name: str) -> Any:
        return self.render(self._raw[name])

    def __iter__(self):
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def render_raw(self, name: str) -> Any:
        """The value as written, for a caller that renders its parts one by one."""
        return self._raw[name]

    def render(self, value: Any) -> Any:
        if isinstance(value, str) and ("{{" in value or "{%" in value):
            # Only the names the template uses: rendering the whole mapping would render
            # every value, each of which may refer back to others.
            names = jinja2.meta.find_undeclared_variables(_ENV.parse(value))
            return _ENV.from_string(value).render({n: self[n] for n in names if n in self._raw})
        if isinstance(value, list):
            return [self.render(v) for v in value]
        if isinstance(value, dict):
            return {k: self.render(v) for k, v in value.items()}
        return value
