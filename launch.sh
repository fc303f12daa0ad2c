#!/usr/bin/env bash
# One script for every way of running alexnet_jax. ./launch.sh --help lists the commands.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${ALEXNET_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

usage() {
  cat <<'USAGE'
Usage: ./launch.sh COMMAND [ARGS]

  setup [--accelerator cpu|cuda|tpu]   Create .venv (or $ALEXNET_VENV) with the right JAX build.
  local FLAGFILE [flags...]            Run python -m alexnet_jax.main with FLAGFILE on this machine.
  test [pytest args...]                Run the test suite (fast; CPU only).

Environment: ALEXNET_VENV (virtual environment, default ./.venv), PYTHON (interpreter for setup).
USAGE
}

die() { echo "launch.sh: $*" >&2; exit 2; }

venv_python() {
  [[ -x "$VENV/bin/python" ]] || die "no virtual environment at $VENV; run ./launch.sh setup first"
  echo "$VENV/bin/python"
}

cmd_setup() {
  local accelerator=cpu
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --accelerator) accelerator="${2:-}"; shift 2 ;;
      --accelerator=*) accelerator="${1#*=}"; shift ;;
      *) die "setup: unknown argument $1" ;;
    esac
  done
  case "$accelerator" in cpu|cuda|tpu) ;; *) die "setup: --accelerator must be cpu, cuda or tpu" ;; esac
  [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -r "$ROOT/requirements.txt"
  case "$accelerator" in
    cuda) "$VENV/bin/python" -m pip install --quiet --upgrade "jax[cuda12]" ;;
    tpu) "$VENV/bin/python" -m pip install --quiet --upgrade "jax[tpu]" ;;
  esac
  echo "launch.sh: environment ready in $VENV ($accelerator)"
}

cmd_local() {
  [[ $# -ge 1 ]] || die "local: needs a FLAGFILE (see experiments/)"
  local flagfile="$1"; shift
  [[ -f "$flagfile" ]] || die "local: no flagfile $flagfile"
  cd "$ROOT"
  exec "$(venv_python)" -m alexnet_jax.main --flagfile="$flagfile" "$@"
}

cmd_test() {
  cd "$ROOT"
  exec "$(venv_python)" -m pytest -q tests "$@"
}

case "${1:-}" in
  setup) shift; cmd_setup "$@" ;;
  local) shift; cmd_local "$@" ;;
  test) shift; cmd_test "$@" ;;
  -h|--help|help|"") usage ;;
  *) usage >&2; die "unknown command $1" ;;
esac
