#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian machine: the Fashion-MNIST package and the
# pinned Python stack. Idempotent and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "setup: installing Debian package dataset-fashion-mnist" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
if ! $PY - <<'PYEOF' 2>/dev/null
import importlib.metadata as md, re, sys
for line in open("requirements.txt"):
    line = line.split("#")[0].strip()
    if not line: continue
    name = re.split(r"[<>=!]", line)[0]
    want = line.split("==")[1] if "==" in line else None
    have = md.version(name)
    if want and have != want: sys.exit(1)
PYEOF
then
  echo "setup: pip install -r requirements.txt" >&2
  $PY -m pip install -q -r requirements.txt
fi
