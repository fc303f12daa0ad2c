#!/usr/bin/env bash
# One script for every way of running alexnet_jax. ./launch.sh --help lists the commands.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${ALEXNET_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

usage() {
  cat <<'USAGE'
Usage: ./launch.sh COMMAND [ARGS]

  setup [--accelerator cpu|cuda|tpu]
      Create .venv (or $ALEXNET_VENV) with the right JAX build.
  local FLAGFILE [--processes N] [flags...]
      Run python -m alexnet_jax.main with FLAGFILE on this machine. With N > 1, start N
      processes joined by jax.distributed on the CPU (localhost coordinator, gloo
      collectives): the multi-process path on any machine. --cpu_devices=K gives each K.
  slurm FLAGFILE --nodes N --gpus-per-node G [--sbatch=OPTION ...] [--dry-run] [flags...]
      Write slurm/<flagfile name>.sbatch and submit it: N nodes, one process per GPU
      (srun --ntasks-per-node=G); jax.distributed finds the coordinator from SLURM.
      --sbatch=OPTION adds an #SBATCH line (e.g. --sbatch=--time=48:00:00).
  tpu FLAGFILE --tpu NAME --zone ZONE [--project P] [--dir DIR] [--dry-run] [flags...]
      Run FLAGFILE on every worker of a TPU VM (pod slice) at once, from DIR (default
      alexnet_jax, in the home directory) where the code and its .venv must be:
      gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all --command "...".
  test [--fast] [pytest args...]
      Run the test suite on the CPU, or the tests the arguments name (files, folders,
      FILE::TEST). --fast leaves out the tests marked slow (real training runs,
      subprocesses, multi-process runs): under 4 minutes on 2 cores.

  --dry-run prints what would be submitted or run (the sbatch script and command, the
  gcloud command) and does nothing. Other flags go to alexnet_jax.main.

Environment: ALEXNET_VENV (virtual environment, default ./.venv), PYTHON (interpreter for setup).
USAGE
}

die() { echo "launch.sh: $*" >&2; exit 2; }

venv_python() {
  [[ -x "$VENV/bin/python" ]] || die "no virtual environment at $VENV; run ./launch.sh setup first"
  echo "$VENV/bin/python"
}

# The flagfile as a path that works from $ROOT (where runs start): relative inside it.
flagfile_path() {
  [[ -f "$1" ]] || die "no flagfile $1"
  local path
  path="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
  echo "${path#"$ROOT"/}"
}

# A command line as a shell reads it back: arguments with special characters in '...'.
quoted() {
  local out="" arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+="$arg "
    else
      out+="'${arg//\'/\'\\\'\'}' "
    fi
  done
  echo "${out% }"
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

# Exit status of background process $1, waiting again when a trapped signal interrupts.
wait_for() {
  local rc=0
  wait "$1" || rc=$?
  while (( rc > 128 )) && kill -0 "$1" 2>/dev/null; do
    rc=0
    wait "$1" || rc=$?
  done
  return "$rc"
}

cmd_local() {
  [[ $# -ge 1 ]] || die "local: needs a FLAGFILE (see experiments/)"
  local flagfile processes=1 args=()
  flagfile="$(flagfile_path "$1")"; shift
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --processes) processes="${2:-}"; shift 2 || die "local: --processes needs a number" ;;
      --processes=*) processes="${1#*=}"; shift ;;
      *) args+=("$1"); shift ;;
    esac
  done
  [[ "$processes" =~ ^[1-9][0-9]*$ ]] || die "local: --processes must be a positive number"
  local python
  python="$(venv_python)"
  cd "$ROOT"
  if (( processes == 1 )); then
    exec "$python" -m alexnet_jax.main --flagfile="$flagfile" ${args[@]+"${args[@]}"}
  fi
  local port coordinator pids=() i
  port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')"
  # JAX's coordination service in a process of its own, not in process 0: the others
  # outlive the loss of any process, process 0 included, and say which one it was.
  JAX_PLATFORMS=cpu "$python" -m alexnet_jax.coordinator "$port" "$processes" \
    --flagfile="$flagfile" ${args[@]+"${args[@]}"} &
  coordinator=$!
  # A SIGTERM to this script reaches every process: they save one checkpoint together.
  # Background jobs of a script ignore Ctrl-C: pass both SIGINT and SIGTERM on as SIGTERM.
  trap 'kill -TERM ${pids[@]+"${pids[@]}"} 2>/dev/null || true' INT TERM
  for (( i = 0; i < processes; i++ )); do
    JAX_PLATFORMS=cpu "$python" -m alexnet_jax.main --flagfile="$flagfile" ${args[@]+"${args[@]}"} \
      --coordinator_address="localhost:$port" --num_processes="$processes" --process_id="$i" \
      --coordination_service=separate &
    pids+=("$!")
  done
  # Collect the processes in the order they end (polled: bash 3 has no wait -n), so that
  # the last line names the first one that failed, the cause of the others' errors. Bash's
  # own report of a process killed by a signal (the whole command line) is left out.
  local statuses=() order=() first="" rc
  while (( ${#order[@]} < processes )); do
    for (( i = 0; i < processes; i++ )); do
      [[ -z "${statuses[i]:-}" ]] && ! kill -0 "${pids[i]}" 2>/dev/null || continue
      rc=0
      wait_for "${pids[i]}" || rc=$?
      statuses[i]=$rc
      order+=("$i")
      [[ -n "$first" ]] || (( rc == 0 )) || first=$i
    done
    if (( ${#order[@]} < processes )) && ! kill -0 "$coordinator" 2>/dev/null; then
      kill -TERM "${pids[@]}" 2>/dev/null || true  # it said why; without it they cannot run
    fi
    (( ${#order[@]} == processes )) || sleep 0.1
  done 2>/dev/null
  kill "$coordinator" 2>/dev/null || true
  wait "$coordinator" 2>/dev/null || true
  [[ -n "$first" ]] || return 0
  for i in "${order[@]}"; do
    (( i == first || statuses[i] == 0 )) || echo "launch.sh: $(ended "$i" "${statuses[i]}")" >&2
  done
  echo "launch.sh: $(ended "$first" "${statuses[first]}"), the first process to stop" >&2
  return "${statuses[first]}"
}

# How process $1 ended, from its exit status $2 (the shell's 128 + N for signal N).
ended() {
  if (( $2 > 128 )); then
    echo "process $1 was killed by SIG$(kill -l $(( $2 - 128 )))"
  else
    echo "process $1 exited with status $2"
  fi
}

cmd_slurm() {
  [[ $# -ge 1 ]] || die "slurm: needs a FLAGFILE (see experiments/)"
  local flagfile nodes="" gpus="" dry_run=0 sbatch=() args=()
  flagfile="$(flagfile_path "$1")"; shift
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --nodes) nodes="${2:-}"; shift 2 || die "slurm: --nodes needs a number" ;;
      --nodes=*) nodes="${1#*=}"; shift ;;
      --gpus-per-node) gpus="${2:-}"; shift 2 || die "slurm: --gpus-per-node needs a number" ;;
      --gpus-per-node=*) gpus="${1#*=}"; shift ;;
      --sbatch=*) sbatch+=("${1#*=}"); shift ;;
      --dry-run) dry_run=1; shift ;;
      *) args+=("$1"); shift ;;
    esac
  done
  [[ "$nodes" =~ ^[1-9][0-9]*$ ]] || die "slurm: --nodes N (a positive number) is required"
  [[ "$gpus" =~ ^[1-9][0-9]*$ ]] || die "slurm: --gpus-per-node G (a positive number) is required"
  local name script option
  name="$(basename "$flagfile" .flags)"
  script="$ROOT/slurm/$name.sbatch"
  # One task per GPU, each seeing all of its node's GPUs: JAX picks GPU SLURM_LOCALID.
  # --signal: a SIGTERM 5 minutes before the time limit saves a checkpoint (resumed on resubmit).
  local text
  text="#!/bin/bash
#SBATCH --job-name=alexnet_jax-$name
#SBATCH --nodes=$nodes
#SBATCH --ntasks-per-node=$gpus
#SBATCH --gpus-per-node=$gpus
#SBATCH --signal=TERM@300
#SBATCH --output=$ROOT/slurm/%x-%j.out"
  for option in ${sbatch[@]+"${sbatch[@]}"}; do text+=$'\n'"#SBATCH $option"; done
  text+="
set -euo pipefail
cd $(quoted "$ROOT")
srun --ntasks-per-node=$gpus --kill-on-bad-exit=1 $(quoted "$VENV/bin/python" -m alexnet_jax.main \
    --flagfile="$flagfile" ${args[@]+"${args[@]}"})"
  if (( dry_run )); then
    echo "$text"
    echo "sbatch $(quoted "$script")"
    return
  fi
  venv_python >/dev/null
  mkdir -p "$ROOT/slurm"
  echo "$text" > "$script"
  sbatch "$script"
}

cmd_tpu() {
  [[ $# -ge 1 ]] || die "tpu: needs a FLAGFILE (see experiments/)"
  local flagfile tpu="" zone="" project="" dir=alexnet_jax dry_run=0 args=()
  flagfile="$(flagfile_path "$1")"; shift
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --tpu) tpu="${2:-}"; shift 2 || die "tpu: --tpu needs a name" ;;
      --tpu=*) tpu="${1#*=}"; shift ;;
      --zone) zone="${2:-}"; shift 2 || die "tpu: --zone needs a zone" ;;
      --zone=*) zone="${1#*=}"; shift ;;
      --project) project="${2:-}"; shift 2 || die "tpu: --project needs a project" ;;
      --project=*) project="${1#*=}"; shift ;;
      --dir) dir="${2:-}"; shift 2 || die "tpu: --dir needs a directory" ;;
      --dir=*) dir="${1#*=}"; shift ;;
      --dry-run) dry_run=1; shift ;;
      *) args+=("$1"); shift ;;
    esac
  done
  [[ -n "$tpu" ]] || die "tpu: --tpu NAME is required"
  [[ -n "$zone" ]] || die "tpu: --zone ZONE is required"
  # Every worker runs the same command; --distributed=on lets JAX find the others.
  local remote
  remote="cd $(quoted "$dir") && $(quoted ./launch.sh local "$flagfile" --distributed=on \
      ${args[@]+"${args[@]}"})"
  local command=(gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone")
  [[ -z "$project" ]] || command+=(--project="$project")
  command+=(--worker=all --command "$remote")
  if (( dry_run )); then
    quoted "${command[@]}"
    return
  fi
  exec "${command[@]}"
}

cmd_test() {
  cd "$ROOT"
  local args=() where=(tests) arg
  if [[ "${1:-}" == --fast ]]; then
    shift
    args=(-m "not slow")
  fi
  # Arguments that name tests (a file, a folder, FILE::TEST) run those, not the whole suite.
  for arg in "$@"; do
    [[ "$arg" != -* && -e "${arg%%::*}" ]] && where=()
  done
  exec "$(venv_python)" -m pytest -q ${where[@]+"${where[@]}"} ${args[@]+"${args[@]}"} "$@"
}

case "${1:-}" in
  setup) shift; cmd_setup "$@" ;;
  local) shift; cmd_local "$@" ;;
  slurm) shift; cmd_slurm "$@" ;;
  tpu) shift; cmd_tpu "$@" ;;
  test) shift; cmd_test "$@" ;;
  -h|--help|help|"") usage ;;
  *) usage >&2; die "unknown command $1" ;;
esac
