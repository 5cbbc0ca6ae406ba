#!/usr/bin/env bash
# Install studyctl with its test tools into .venv (if needed), then lint, type-check and run
# the whole test suite. The README's test command; CI runs it too.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"

# PostgreSQL-backed tests need the local server; start it if it is installed and down.
if command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  for version in /etc/postgresql/*/; do
    pg_ctlcluster --skip-systemctl-redirect "$(basename "$version")" main start || true
    break
  done
fi

# Browser tests use Debian's Chromium (never a browser download); the launcher scripts are
# checked with shellcheck; `studyctl watch` is driven in a terminal through tmux.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
if [ "${#missing[@]}" -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

.venv/bin/ruff check src objectives tests scripts migrations
.venv/bin/ruff format --check src objectives tests scripts migrations
.venv/bin/mypy
.venv/bin/pytest "$@"
