#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install everything it needs.
# Usage: bash tools/install_env.sh [VENV_DIR]      (default: .venv in the repository root)
# Idempotent: a finished install leaves a stamp keyed on this script and setup.cfg, and a second
# run with the same stamp returns at once.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-"$repo/.venv"}
stamp="$venv/.expedite-install-stamp"
want_stamp=$(cat "$repo/tools/install_env.sh" "$repo/setup.cfg" | sha256sum | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ]; then
  exit 0
fi

log() { printf '[install] %s\n' "$*" >&2; }

[ -x "$venv/bin/python" ] || { log "creating virtual environment $venv"; python3 -m venv "$venv"; }
py="$venv/bin/python"
pip=("$py" -m pip install --disable-pip-version-check --progress-bar off)

# torchvision wheels on PyPI are CUDA builds that need the matching PyPI torch (see README).
log "installing torch 2.14.1 + torchvision 0.29.2"
"${pip[@]}" torch==2.14.1 torchvision==0.29.2

# detectron2: the official repository at a pinned commit when it is reachable, otherwise the
# PyPI republish sal-detectron2 0.7.2 (detectron2's Python package, 2024), checked by sha256 and
# repacked as a pure-Python wheel (its _C extension is built for CPython 3.10 only).
D2_COMMIT=95a87b8dd359014d1ff81fe14f539dd279bcbe4b
D2_REPUBLISH_SHA256=491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561
d2_source_file="$venv/detectron2-source.txt"
if "$py" -c "import detectron2.modeling.backbone.vit" 2>/dev/null && [ -f "$d2_source_file" ]; then
  log "detectron2 already installed ($(cat "$d2_source_file"))"
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  if timeout 30 git -c http.lowSpeedLimit=1000 -c http.lowSpeedTime=10 clone --quiet --filter=blob:none \
       https://github.com/facebookresearch/detectron2.git "$work/detectron2" 2>/dev/null \
     && git -C "$work/detectron2" checkout --quiet "$D2_COMMIT"; then
    log "building detectron2 from its official repository at $D2_COMMIT"
    "${pip[@]}" --no-build-isolation "$work/detectron2"
    echo "official repository, commit $D2_COMMIT" > "$d2_source_file"
  else
    log "official detectron2 repository unreachable: using the PyPI republish sal-detectron2==0.7.2"
    "$py" -m pip download --disable-pip-version-check --quiet --no-deps --only-binary=:all: \
      --python-version 3.10 -d "$work" sal-detectron2==0.7.2
    whl="$work/sal_detectron2-0.7.2-cp310-none-any.whl"
    echo "$D2_REPUBLISH_SHA256  $whl" | sha256sum --check --quiet \
      || { log "sha256 mismatch for $whl: refusing to install it"; exit 1; }
    "$py" "$repo/tools/repack_pure_wheel.py" "$whl" "$work/repacked"
    "${pip[@]}" "$work"/repacked/*.whl
    echo "PyPI republish sal-detectron2==0.7.2 (sha256 $D2_REPUBLISH_SHA256), repacked pure-Python, no _C" \
      > "$d2_source_file"
  fi
fi

# panopticapi is not on PyPI under that name; panopticapi-lite provides the same package.
PANOPTICAPI_SHA256=58d3ffa842a72240162e7fa744c602a0a5320baabbdb3295d770374f4639b486
if ! "$py" -c "import panopticapi" 2>/dev/null; then
  work2=$(mktemp -d)
  "$py" -m pip download --disable-pip-version-check --quiet --no-deps -d "$work2" panopticapi-lite==0.2.0
  echo "$PANOPTICAPI_SHA256  $work2/panopticapi_lite-0.2.0-py3-none-any.whl" | sha256sum --check --quiet \
    || { log "sha256 mismatch for panopticapi-lite: refusing to install it"; exit 1; }
  "${pip[@]}" "$work2"/panopticapi_lite-0.2.0-py3-none-any.whl
  rm -rf "$work2"
fi

log "installing the project (editable) and its dependencies from setup.cfg"
"${pip[@]}" -e "$repo[dev]"

echo "$want_stamp" > "$stamp"
log "done; detectron2: $(cat "$d2_source_file")"
