"""The fleet's model list (segserve_models), checked and resolved once for every tier.

`segserve.fleet.models_problems` says what is wrong with the list, one sentence per problem, for the
fleet's preflight to print; `segserve.fleet.models_resolve` turns a valid list into what the plays
read: each model's name, whether it is the default (the first), its port (None for the
default, which keeps the app role's own), the app hosts that serve it, in inventory order,
and the settings it gives its uwsgi_app instance.
"""

from __future__ import annotations

import re

# Letters, digits, '_' and '-': a URL path segment, a systemd unit name and a metrics label
# value as they are (the app checks SEGSERVE_MODEL_NAME against the same pattern).
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
# The uwsgi_app inputs a model may set for itself; any it leaves out takes the role's value.
SETTINGS = (
    "arch",
    "weights_src",
    "weights_url",
    "weights_sha256",
    "onnx_src",
    "onnx_sha256",
    "backend",
    "precision",
    "input_size",
    "processes",
)
# Each instance takes a block of ports from its own: uwsgi, health, metrics, stats (the
# uwsgi_app role's defaults derive the other three from the first).
PORTS_PER_MODEL = 4


def _hosts(entry, groups, app_group):
    wanted = entry.get("hosts", app_group)
    app_hosts = list(groups.get(app_group, []))
    members = set(groups.get(wanted, [])) if isinstance(wanted, str) else set(wanted)
    return [h for h in app_hosts if h in members]


def segserve_models_problems(models, groups, app_group, default_port):
    if not isinstance(models, list) or not models:
        return ["segserve_models must be a list of at least one model, the default first."]
    problems = []
    seen = {}
    app_hosts = set(groups.get(app_group, []))
    for index, entry in enumerate(models):
        where = f"segserve_models[{index}]"
        if not isinstance(entry, dict):
            problems.append(f"{where} must be a mapping with at least a name.")
            continue
        name = entry.get("name")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            problems.append(
                f"{where}.name is {name!r}: it must be 1-40 of a-z, 0-9, '_' and '-', starting"
                " with a letter or digit (it is a URL path segment and a unit name)."
            )
        elif name in seen:
            problems.append(f"Model name {name!r} is given twice ({seen[name]} and {where}).")
        else:
            seen[name] = where
            where = f"model {name!r}"
        unknown = sorted(set(entry) - {"name", "port", "hosts", *SETTINGS})
        if unknown:
            problems.append(
                f"{where} has unknown keys {unknown}: a model may set name, port, hosts and"
                f" {', '.join(SETTINGS)}."
            )
        port = entry.get("port")
        if index == 0 and port is not None:
            problems.append(
                f"{where} is the default model: it runs on the uwsgi_app role's own port"
                " (segserve_uwsgi_port), so it takes no port of its own."
            )
        elif index > 0:
            if port is None:
                problems.append(
                    f"{where} needs a port: its instance takes it and the {PORTS_PER_MODEL - 1}"
                    " after it (uwsgi, health, metrics, stats)."
                )
            elif (
                isinstance(port, bool)
                or not isinstance(port, int)
                or not 1024 <= port <= 65536 - PORTS_PER_MODEL
            ):
                problems.append(
                    f"{where} has port {port!r}: a number from 1024 to 65532 (the service"
                    " binds it unprivileged, and the 3 after it)."
                )
        hosts = entry.get("hosts", app_group)
        if isinstance(hosts, str):
            if hosts not in groups:
                problems.append(f"{where} is served by group {hosts!r}, which the inventory lacks.")
        elif isinstance(hosts, list):
            strangers = sorted(set(hosts) - app_hosts)
            if strangers:
                problems.append(
                    f"{where} lists hosts {strangers} that are not in the {app_group!r} group."
                )
        else:
            problems.append(f"{where}.hosts must be a group name or a list of app hosts.")
        if isinstance(hosts, (str, list)) and not _hosts(entry, groups, app_group):
            problems.append(f"{where} is served by no host of the {app_group!r} group.")
    problems += _overlaps(models, int(default_port))
    return problems


def _overlaps(models, default_port):
    """Models whose blocks of ports overlap (every host runs every model's block, at most)."""
    blocks = [(str(models[0].get("name")) if isinstance(models[0], dict) else "?", default_port)]
    blocks += [
        (str(m.get("name")), m["port"])
        for m in models[1:]
        if isinstance(m, dict) and isinstance(m.get("port"), int)
    ]
    problems = []
    for i, (name, port) in enumerate(blocks):
        for other, other_port in blocks[i + 1 :]:
            if abs(port - other_port) < PORTS_PER_MODEL:
                problems.append(
                    f"Models {name!r} (ports {port}-{port + PORTS_PER_MODEL - 1}) and {other!r}"
                    f" (ports {other_port}-{other_port + PORTS_PER_MODEL - 1}) overlap: each"
                    f" model takes {PORTS_PER_MODEL} ports from its own."
                )
    return problems


def segserve_models_resolve(models, groups, app_group):
    resolved = []
    for index, entry in enumerate(models):
        resolved.append(
            {
                "name": entry["name"],
                "default": index == 0,
                "port": entry.get("port"),
                "hosts": _hosts(entry, groups, app_group),
                "settings": {k: entry[k] for k in SETTINGS if k in entry},
            }
        )
    return resolved


class FilterModule:
    def filters(self):
        return {
            "models_problems": segserve_models_problems,
            "models_resolve": segserve_models_resolve,
            "model_instances": segserve_model_instances,
            "metrics_targets": segserve_metrics_targets,
            "exporter_targets": segserve_exporter_targets,
        }


def segserve_model_instances(models, host, base_name, base_port, base_settings):
    """The uwsgi_app instances `host` runs, one per model it serves (resolved list), each with
    every setting filled: the model's own, else the host's uwsgi_app_<key> (base_settings).
    The default model's instance is the role's own (base_name, base_port); another's is
    <base_name>-<model name>, on the model's port."""
    instances = []
    for model in models:
        if host not in model["hosts"]:
            continue
        instance = dict(base_settings)
        instance.update(model["settings"])
        instance.update(
            name=model["name"],
            default=model["default"],
            instance=base_name if model["default"] else f"{base_name}-{model['name']}",
            port=int(base_port) if model["default"] else model["port"],
        )
        instances.append(instance)
    return instances


# The uwsgi_app role gives each instance a block of four ports: uwsgi, health, metrics, stats.
METRICS_PORT_OFFSET = 2


def _address(values, address_var):
    """A host's private address: `address_var` where the inventory sets it, else its
    default IPv4 fact, else ansible_host; in brackets when IPv6, for host:port."""
    facts = values.get("ansible_facts") or {}
    for candidate in (
        values.get(address_var),
        (facts.get("default_ipv4") or {}).get("address"),
        values.get("ansible_host"),
    ):
        text = str(candidate or "").strip()
        if text and text not in ("0.0.0.0", "::", "[::]", "*"):
            return f"[{text}]" if ":" in text else text
    return ""


def segserve_metrics_targets(models, hostvars, default_port):
    """Prometheus static_configs for every app host's instance of every model (resolved
    list): its metrics port on its private address, labelled with the inventory host. The
    default model's instance reads the host's uwsgi_app_port and uwsgi_app_metrics_port;
    another model's takes its own port's block. An instance whose metrics port is 0 (turned
    off) is left out. A host without an address gives an empty address, for the caller's
    check."""
    configs = []
    for model in models:
        for host in model["hosts"]:
            values = hostvars[host]
            if model["default"]:
                port = int(values.get("uwsgi_app_port", default_port))
                metrics = int(values.get("uwsgi_app_metrics_port", port + METRICS_PORT_OFFSET))
            else:
                metrics = int(model["port"]) + METRICS_PORT_OFFSET
            if metrics == 0:
                continue
            address = _address(values, "uwsgi_app_listen_address")
            configs.append({"targets": [f"{address}:{metrics}"], "labels": {"host": host}})
    return configs


def segserve_exporter_targets(hosts, hostvars, port_var, default_port):
    """Prometheus static_configs for one exporter on each of `hosts`: the port the host sets
    in `port_var`, else `default_port`, on its exporters_listen_address or private address."""
    configs = []
    for host in hosts:
        values = hostvars[host]
        port = int(values.get(port_var, default_port))
        address = _address(values, "exporters_listen_address")
        configs.append({"targets": [f"{address}:{port}"], "labels": {"host": host}})
    return configs
