"""The values the fleet is deployed with (ports, paths, names, limits), read from the files
Ansible reads them from, never typed again here: the roles' defaults and vars and the
inventory this scenario builds (molecule.yml). Every test module of the scenario shares them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
SCENARIO = Path(__file__).resolve().parent.parent
# The project's one resolver of role variables (tools/rolevars.py).
sys.path.insert(0, str(PROJECT / "tools"))
from rolevars import RoleVars  # noqa: E402

_MOLECULE = yaml.safe_load((SCENARIO / "molecule.yml").read_text())
# Each platform's groups, and the inventory's group_vars and host_vars: linked directories
# (relative to the scenario directory, as Molecule resolves them) or written in molecule.yml.
_GROUPS = {p["name"]: p.get("groups", []) for p in _MOLECULE["platforms"]}
_INVENTORY = _MOLECULE["provisioner"].get("inventory", {})


def _yaml(path):
    return yaml.safe_load(path.read_text()) or {}


def _inventory_vars(kind, name):
    """The inventory's group_vars or host_vars (`kind`) for `name`, in the order Ansible
    reads them: a linked directory's `name`/*.yml (or `name`.yml), then molecule.yml's own."""
    found = {}
    if kind in _INVENTORY.get("links", {}):
        base = SCENARIO / _INVENTORY["links"][kind]
        folder = base / name
        files = (
            sorted(p for p in folder.iterdir() if p.suffix in (".yml", ".yaml"))
            if folder.is_dir()
            else [p for p in (base / f"{name}.yml", base / f"{name}.yaml") if p.is_file()]
        )
        for path in files:
            found.update(_yaml(path))
    found.update(_INVENTORY.get(kind, {}).get(name) or {})
    return found


def _roles_vars(kind):
    """Every role's defaults or vars (`kind`) together. Each role names its variables with its
    own prefix, so no two roles define one: where they do, which one a play sees depends on
    the play, and this raises instead of picking one."""
    merged, owner = {}, {}
    for path in sorted((PROJECT / "roles").glob(f"*/{kind}/main.yml")):
        role = path.parent.parent.name
        for name, value in _yaml(path).items():
            if name in owner:
                raise ValueError(f"{name} is in the {kind} of both {owner[name]} and {role}")
            merged[name], owner[name] = value, role
    return merged


def host_vars(host):
    """A host's variables from the roles and the inventory, in Ansible's order of precedence
    (lowest first): the roles' defaults, the inventory's group_vars (all, then the host's
    groups), its host_vars, the roles' vars, rendered as tools/rolevars.py renders them. A
    play's own vars are not read: the fleet's plays set none of the values below."""
    layers = [_roles_vars("defaults")]
    layers += [_inventory_vars("group_vars", g) for g in ("all", *_GROUPS[host])]
    layers += [_inventory_vars("host_vars", host), _roles_vars("vars")]
    return RoleVars.from_layers(layers)


# app2 takes its vars from the same files as app1 (the scenario has no host_vars for either).
APP_VARS = host_vars("app1")
LB_VARS = host_vars("lb1")

# The service's name: its systemd unit, its nftables table, its config and runtime dirs.
UNIT = APP_VARS["uwsgi_app_name"]
SERVICE_USER = APP_VARS["uwsgi_app_user"]
VENV = APP_VARS["uwsgi_app_venv"]
RESTART_MARKER = APP_VARS["__uwsgi_app_restart_marker"]
UWSGI_PORT = APP_VARS["uwsgi_app_port"]
HEALTH_PORT = APP_VARS["uwsgi_app_health_port"]
STATS_PORT = APP_VARS["uwsgi_app_stats_port"]
METRICS_PORT = APP_VARS["uwsgi_app_metrics_port"]
MAX_JSON_BYTES = APP_VARS["uwsgi_app_max_json_bytes"]
# Drop-ins the tests add for one case (systemd's runtime directory: gone at the next boot).
DROPIN_DIR = f"/run/systemd/system/{UNIT}.service.d"

# The lab's models (inventory/lab/group_vars/all/models.yml), as written: the first is the
# default, served by UNIT; each other runs as <UNIT>-<name> on the ports from its own.
MODELS = APP_VARS.render_raw("segserve_models")
DEFAULT_MODEL = MODELS[0]["name"]
LAB_WEIGHTS = PROJECT / ".lab" / "weights"
# Where the app hosts keep weights files and converted models (never removed with a model).
WEIGHTS_DIR = APP_VARS["__uwsgi_app_weights_dir"]


def model_unit(name):
    return UNIT if name == DEFAULT_MODEL else f"{UNIT}-{name}"


def model_health_port(name):
    """The health port of a model's instance: its uwsgi port + 1 (uwsgi_app's defaults)."""
    model = next(m for m in MODELS if m["name"] == name)
    return HEALTH_PORT if name == DEFAULT_MODEL else model["port"] + 1


# Every model's uwsgi and metrics ports, which only the lb and monitoring hosts may reach.
PRIVATE_PORTS = [UWSGI_PORT, METRICS_PORT] + [
    port for m in MODELS[1:] for port in (m["port"], m["port"] + 2)
]


def concrete_models(**changes):
    """The lab's model list with each weights file and digest written out (the inventory's
    reads them with lookups), and `changes` (name -> keys) applied: an -e value for a deploy."""
    models = []
    for model in MODELS:
        model = dict(model)
        if "arch" in model:
            weights = LAB_WEIGHTS / f"{model['arch']}-init-seed0.pth"
            model["weights_src"] = str(weights)
            model["weights_sha256"] = (
                (weights.parent / (weights.name + ".sha256")).read_text().strip()
            )
        model.update(changes.get(model["name"], {}))
        models.append(model)
    return models


HTTP_PORT = LB_VARS["nginx_listen_port"]
TLS_PORT = LB_VARS["nginx_tls_port"]
TLS_CERT = LB_VARS["nginx_tls_certificate"]
MAX_BODY_BYTES = LB_VARS["nginx_client_max_body_bytes"]
INFLIGHT_LIMIT = LB_VARS["nginx_inflight_limit"]
STATUS_PATH = LB_VARS["nginx_status_path"]
ACCESS_LOG = LB_VARS["nginx_access_log_path"]
ERROR_LOG = LB_VARS["nginx_error_log_path"]
SITE = LB_VARS["__nginx_site_file"]
