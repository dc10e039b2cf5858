#!/usr/bin/env bash
# Creates a throwaway virtualenv at bench/litellm/.venv with LiteLLM's proxy
# (`litellm[proxy]` from PyPI), for the comparison benchmarks in bench/README.md.
# Safe to rerun: an existing venv is reused and upgraded.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet --upgrade 'litellm[proxy]'
echo "LiteLLM $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))') installed in $venv"
