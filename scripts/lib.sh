# Shared helpers for the scripts in this folder. Source it, do not run it.
# shellcheck shell=bash
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SEGSERVE_VENV:-$REPO_ROOT/.venv}"
LAB_DIR="${SEGSERVE_LAB_DIR:-$REPO_ROOT/.lab}"
export REPO_ROOT VENV LAB_DIR

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Run a command as root: directly when we are root, else through sudo.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

activate_venv() {
  [ -x "$VENV/bin/python" ] || die "no virtualenv at $VENV: run scripts/bootstrap first"
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
}
