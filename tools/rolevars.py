"""Role variables as Ansible would resolve them from the files alone: the defaults and vars of
the named roles (or any layers of variables, lowest precedence first), each value rendered
with Jinja2's native types on first use, as ansible-core renders it. Values that need facts,
lookups, magic variables or filters Jinja2 lacks raise instead of guessing, so a caller only
ever gets a value Ansible would also give for a host that sets nothing more. The one resolver
of the project's tests and tools (molecule/cluster/tests/fleetvars.py builds on it)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import jinja2.nativetypes
import yaml

ROOT = Path(__file__).resolve().parent.parent
_ENV = jinja2.nativetypes.NativeEnvironment(undefined=jinja2.StrictUndefined)


def role_file(role: str, part: str, root: Path = ROOT) -> dict[str, Any]:
    """A role's defaults or vars (`part`), empty when the role has none."""
    path = root / "roles" / role / part / "main.yml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


class RoleVars(Mapping):
    def __init__(self, *roles: str, overrides: Mapping[str, Any] | None = None):
        layers = [role_file(role, part) for role in roles for part in ("defaults", "vars")]
        self._raw = self._merge([*layers, overrides or {}])

    @classmethod
    def from_layers(cls, layers: Iterable[Mapping[str, Any]]) -> RoleVars:
        """Variables from layers in Ansible's order of precedence, lowest first."""
        merged = cls.__new__(cls)
        merged._raw = cls._merge(layers)
        return merged

    @staticmethod
    def _merge(layers: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        raw: dict[str, Any] = {}
        for layer in layers:
            raw.update(layer)
        return raw

    def __getitem__(self, name: str) -> Any:
        return self._resolve(name, ())

    def __iter__(self):
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def render_raw(self, name: str) -> Any:
        """The value as written, for a caller that renders its parts one by one."""
        return self._raw[name]

    def render(self, value: Any) -> Any:
        return self._render(value, ())

    def _resolve(self, name: str, seen: tuple[str, ...]) -> Any:
        if name in seen:
            raise ValueError(f"{name} refers to itself: {' -> '.join((*seen, name))}")
        return self._render(self._raw[name], (*seen, name))

    def _render(self, value: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(value, list):
            return [self._render(v, seen) for v in value]
        if isinstance(value, dict):
            return {k: self._render(v, seen) for k, v in value.items()}
        if not isinstance(value, str) or ("{{" not in value and "{%" not in value):
            return value
        # Only the names the template uses: rendering the whole mapping would render every
        # value, each of which may refer back to others.
        names = jinja2.meta.find_undeclared_variables(_ENV.parse(value))
        known = {n: self._resolve(n, seen) for n in names if n in self._raw}
        return _ENV.from_string(value).render(known)
