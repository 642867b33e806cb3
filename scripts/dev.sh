#!/usr/bin/env bash
# One entry point for newcomers and CI.
#   bash scripts/dev.sh demo [ARGS]   set up, then open napari with the sample scan and the docks
#                                     (no display: runs `medsegdiff demo --headless`)
#   bash scripts/dev.sh test [ARGS]   set up, then run the whole test suite (headless, Xvfb)
#   (test also fetches the real-data set: scripts/fetch_data.sh)
#   bash scripts/dev.sh setup         set up only: .venv with a CPU torch unless an NVIDIA GPU is present
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MEDSEGDIFF_VENV:-.venv}"
PY="$VENV/bin/python"

setup() {
    if [ ! -x "$PY" ]; then
        python3 -m venv "$VENV"
    fi
    "$PY" -m pip install -q --upgrade pip >/dev/null
    if ! "$PY" -c "import torch" 2>/dev/null; then
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
            "$PY" -m pip install -q torch            # CUDA build for this NVIDIA machine
        else
            # CPU build; a bare `torch` requirement would pull a multi-GB CUDA build.
            "$PY" -m pip install -q torch==2.13.0 \
                || "$PY" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
        fi
    fi
    "$PY" -m pip install -q -e ".[all]"
}

virtual_screen() {
    # Qt widgets and napari need a display; Xvfb gives a real one with OpenGL.
    if ! command -v Xvfb >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
        (apt-get update -q && apt-get install -y -q xvfb libxcb-icccm4 libxcb-keysyms1 \
            libxcb-image0 libxcb-render-util0 libxcb-xinerama0 libxcb-xkb1 libxkbcommon-x11-0 \
            libxcb-randr0 libxcb-shape0 libxcb-cursor0 libgl1 libegl1 libfontconfig1 \
            libdbus-1-3) >/dev/null
    fi
}

cmd="${1:-test}"
shift || true
case "$cmd" in
    setup) setup ;;
    test)
        setup
        bash scripts/fetch_data.sh >/dev/null   # the real-data set (issue #16); skips if offline
        virtual_screen
        exec "$PY" -m pytest "$@"
        ;;
    demo)
        setup
        if [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ] && [ "$(uname)" = "Linux" ]; then
            echo "No display found: running the demo headless into ./demo_output" >&2
            exec "$VENV/bin/medsegdiff" demo --headless --out demo_output "$@"
        fi
        exec "$VENV/bin/medsegdiff" demo "$@"
        ;;
    *) echo "usage: bash scripts/dev.sh [setup|test|demo] [ARGS]" >&2; exit 2 ;;
esac
