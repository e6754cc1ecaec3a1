#!/usr/bin/env bash
# The project's two commands, each doing its own idempotent set-up on a fresh machine:
#   bash run.sh study [STUDY.toml]   the main job (see README.md)
#   bash run.sh test [pytest args]   the whole test suite (python -m pytest)
set -euo pipefail
cd "$(dirname "$0")"

setup() {
  # A virtualenv in .venv, (re)installed only when the pinned requirements change.
  local stamp=".venv/.requirements.sha256" want
  want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
  if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return; fi
  echo "== setting up .venv (first run: a few minutes; torch is a large download)"
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt 2>&1 \
    | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import torch, torchvision, tiktoken, datasets, numpy, matplotlib" \
    || { echo "error: the dependency install failed; see the pip output above"; exit 1; }
  echo "$want" > "$stamp"
}

case "${1:-}" in
  study)
    setup; shift
    exec .venv/bin/python study.py "$@" ;;
  test)
    setup; shift
    exec .venv/bin/python -m pytest "$@" ;;
  *)
    echo "usage: bash run.sh study [STUDY.toml] | bash run.sh test [pytest args]" >&2; exit 2 ;;
esac
