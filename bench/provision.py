"""Provisioning time of the lab: a fresh converge and idempotent re-runs of site.yml.

    .venv/bin/python bench/provision.py [--reruns 2] [--settings no-pipelining,mitogen,shipped]

For each setting: `scripts/lab down`, `scripts/lab up`, `ansible-playbook site.yml -i
inventory/lab` on the fresh containers (timed), then the same command again `--reruns` times
(timed; each must report changed=0 on every host, or the setting is not correct). Settings:

- shipped: ansible.cfg as it is (pipelining on, linear strategy, community.docker.docker);
- no-pipelining: the same with ANSIBLE_PIPELINING=False;
- mitogen: Mitogen's mitogen_linear strategy (mitogen from PyPI, installed with pip --target
  into .lab/bench/mitogen, not into .venv), with a copy of inventory/lab whose
  ansible_connection is `docker` instead of `community.docker.docker`: Mitogen replaces only
  connections it knows by their short name (ansible_mitogen/strategy.py,
  REDIRECTED_CONNECTION_PLUGINS), so with the FQCN it would run Ansible's own plugin.

The lab ends converged with the last setting. Writes bench/results/provisioning.md (and .json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LAB = ROOT / ".lab"
MITOGEN = "mitogen==0.3.54"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def molecule_running() -> bool:
    """Whether a Molecule run (another job on these cores) is under way. pgrep is run without
    a shell: a shell's own command line would contain the pattern and always match."""
    return subprocess.run(["pgrep", "-f", "molecule"], capture_output=True).returncode == 0


def sharing(seen: list[str], checks: int) -> str:
    """The machine line's account of other jobs, from the checks made during the run."""
    if not seen:
        return f"no Molecule run seen at any of {checks} checks during the run"
    return (
        f"SHARED: Molecule runs (other jobs on the same cores) seen at {len(seen)} of {checks}"
        f" checks ({', '.join(seen)})"
    )


def mitogen_env() -> tuple[dict, str]:
    target = LAB / "bench" / "mitogen"
    if not (target / "ansible_mitogen").exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(target), MITOGEN],
            check=True,
        )
    inv = LAB / "bench" / "inventory-mitogen"
    shutil.rmtree(inv, ignore_errors=True)
    shutil.copytree(ROOT / "inventory" / "lab", inv)
    conn = inv / "group_vars" / "all" / "connection.yml"
    conn.write_text(
        conn.read_text().replace(
            "ansible_connection: community.docker.docker", "ansible_connection: docker"
        )
    )
    env = {
        "ANSIBLE_STRATEGY_PLUGINS": str(target / "ansible_mitogen" / "plugins" / "strategy"),
        "ANSIBLE_STRATEGY": "mitogen_linear",
        "SEGSERVE_LAB_DIR": str(LAB),
    }
    return env, str(inv)


def converge(inventory: str, env: dict, log: Path) -> dict:
    cmd = ["ansible-playbook", "site.yml", "-i", inventory]
    started = time.perf_counter()
    out = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
    took = time.perf_counter() - started
    log.write_text(out.stdout + out.stderr)
    recap = {
        h: {"ok": int(o), "changed": int(c), "failed": int(f), "unreachable": int(u)}
        for h, o, c, u, f in re.findall(
            r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
            out.stdout,
            re.M,
        )
    }
    tasks = re.findall(r"^(\S.*?) -+ (\d+\.\d+)s$", out.stdout, re.M)
    return {
        "rc": out.returncode,
        "seconds": took,
        "recap": recap,
        "changed": sum(r["changed"] for r in recap.values()),
        "top_tasks": [(name, float(s)) for name, s in tasks[:8]],
        "log": str(log),
        "load": loadavg(),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reruns", type=int, default=2)
    ap.add_argument("--settings", default="no-pipelining,mitogen,shipped")
    ap.add_argument(
        "--fresh",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="recreate the lab before each setting (default) or only re-run",
    )
    args = ap.parse_args()
    os.chdir(ROOT)
    (LAB / "bench").mkdir(parents=True, exist_ok=True)
    results = {
        "started": dt.datetime.utcnow().strftime("%Y-%m-%d %H:%M"),
        "load_start": loadavg(),
        "settings": {},
    }
    seen: list[str] = []
    checks = [0]

    def note_molecule() -> None:
        checks[0] += 1
        if molecule_running():
            seen.append(time.strftime("%H:%M:%S"))

    for name in args.settings.split(","):
        env, inventory = {}, "inventory/lab"
        if name == "no-pipelining":
            env = {"ANSIBLE_PIPELINING": "False"}
        elif name == "mitogen":
            env, inventory = mitogen_env()
        elif name != "shipped":
            raise SystemExit(f"unknown setting {name}")
        entry = {"env": env, "inventory": inventory, "reruns": []}
        if args.fresh:
            subprocess.run(["scripts/lab", "down"], check=True, capture_output=True)
            t = time.perf_counter()
            subprocess.run(["scripts/lab", "up"], check=True, capture_output=True)
            entry["lab_up_s"] = time.perf_counter() - t
            note_molecule()
            entry["fresh"] = converge(inventory, env, LAB / "bench" / f"prov-{name}-fresh.log")
            print(
                f"{name}: fresh {entry['fresh']['seconds']:.0f} s rc {entry['fresh']['rc']}",
                flush=True,
            )
        for i in range(args.reruns):
            note_molecule()
            r = converge(inventory, env, LAB / "bench" / f"prov-{name}-rerun{i}.log")
            entry["reruns"].append(r)
            print(
                f"{name}: re-run {r['seconds']:.0f} s rc {r['rc']} changed {r['changed']}",
                flush=True,
            )
        entry["rerun_median_s"] = statistics.median(r["seconds"] for r in entry["reruns"])
        entry["correct"] = all(r["rc"] == 0 and r["changed"] == 0 for r in entry["reruns"]) and (
            not args.fresh or entry["fresh"]["rc"] == 0
        )
        results["settings"][name] = entry
    results["load_end"] = loadavg()
    results["sharing"] = sharing(seen, checks[0])
    (HERE / "results" / "provisioning.json").write_text(json.dumps(results, indent=1) + "\n")
    write_report(results, HERE / "results" / "provisioning.md", " ".join(sys.argv[1:]))
    return 0


def write_report(res: dict, path: Path, argv: str) -> None:
    L = ["# Provisioning: site.yml on the lab (lb1, app1, app2)\n"]
    command = f"python bench/provision.py {argv}".strip()
    L.append(
        f"- Command: `{command}` ({res['started']} UTC); `scripts/bench --provisioning` runs it too"
    )
    L.append(
        f"- Machine: 2 cores; {res.get('sharing', 'other jobs not checked')}; load average "
        f"{res['load_start']} at the start, {res['load_end']} at the end. The app play runs "
        "one host at a time (serial 1)."
    )
    L.append(
        "- Fresh = `scripts/lab down; scripts/lab up` then site.yml on the new containers "
        "(wheels from the lab's wheelhouse, no index). Re-run = site.yml again; correct = "
        "every re-run reports changed=0 on every host.\n"
    )
    L.append(
        "| setting | fresh converge | idempotent re-run (each) | re-run median | "
        "changed on re-runs | correct |"
    )
    L.append("|---|---:|---|---:|---:|---|")
    for name, e in res["settings"].items():
        fresh = f"{e['fresh']['seconds']:.0f} s" if "fresh" in e else "-"
        each = ", ".join(f"{r['seconds']:.1f} s" for r in e["reruns"])
        changed = ", ".join(str(r["changed"]) for r in e["reruns"])
        L.append(
            f"| {name} | {fresh} | {each} | {e['rerun_median_s']:.1f} s | {changed} | "
            f"{'yes' if e['correct'] else 'NO'} |"
        )
    L.append("")
    for name, e in res["settings"].items():
        if e["reruns"]:
            L.append(f"Slowest tasks of the last re-run, {name} (profile_tasks, s):\n")
            L.append("| task | s |\n|---|---:|")
            for task, s in e["reruns"][-1]["top_tasks"]:
                L.append(f"| {task} | {s:.2f} |")
            L.append("")
    path.write_text("\n".join(L) + "\n")


if __name__ == "__main__":
    sys.exit(main())
