#!/usr/bin/env bash
# Set up this project on a fresh Debian machine with Python 3.11:
#   bash bootstrap.sh         system packages, .venv, the project and its pinned dependencies
#   bash bootstrap.sh --dev   the same plus the test tools (and Chromium for the browser test)
# Safe to re-run: it only installs what is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

dev=0
[[ "${1:-}" == "--dev" ]] && dev=1
python=${PYTHON:-$(command -v python3.11 || command -v python3)}

# Debian packages: the Fashion-MNIST mirror (without it, download falls back to the public
# URLs in datasets.yaml); with --dev, Chromium for the browser test and shellcheck for actionlint.
packages=()
[[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]] || packages+=(dataset-fashion-mnist)
if ((dev)); then
    command -v chromium >/dev/null || packages+=(chromium)
    command -v shellcheck >/dev/null || packages+=(shellcheck)
fi
if ((${#packages[@]})) && command -v apt-get >/dev/null; then
    sudo=""
    [[ $(id -u) == 0 ]] || sudo=sudo
    echo "bootstrap: apt-get install ${packages[*]}"
    $sudo apt-get update -q >/dev/null || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${packages[@]}" >/dev/null \
        || echo "bootstrap: WARNING: could not install ${packages[*]}; see README (Datasets, Tests)" >&2
fi

[[ -x .venv/bin/python ]] || "$python" -m venv .venv
extra=""
((dev)) && extra="[dev]"
echo "bootstrap: pip install -e .${extra} (pinned by requirements.lock)"
.venv/bin/python -m pip install -q --disable-pip-version-check -c requirements.lock -e ".${extra}"
# DVC needs a Git repository; a download of the sources without .git gets one.
[[ -d .git ]] || git init -q
echo "bootstrap: ready (activate with: source .venv/bin/activate)"
