#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/k8s/ offline against the Kubernetes JSON schemas,
# strictly (an unknown field is an error, not dropped), with kubernetes-validate from PyPI, which
# bundles the schemas; and checks that the validation can fail: every testdata/broken-*.yaml must be
# rejected. Also checks that kustomization.yaml lists exactly the manifests here.
#
# Usage: deploy/k8s/validate.sh
#   KLF_K8S_VERSIONS   Kubernetes versions to validate against (default: "1.34.0 1.37.0", the oldest
#                      and newest the pinned validator bundles)
#   XDG_CACHE_HOME     the validator's venv is kept in ${XDG_CACHE_HOME:-~/.cache}/klf-k8s-validate/,
#                      one per content of validate-requirements.txt (the pinned versions)
#
# Needs python3 with venv (on Debian: python3-venv, installed here if missing and run as root) and
# PyPI the first time; nothing after that. Exits non-zero on any failure.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
requirements=$here/validate-requirements.txt
versions=${KLF_K8S_VERSIONS:-1.34.0 1.37.0}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/klf-k8s-validate
venv=$cache/$(sha256sum "$requirements" | cut -c1-16)

log() { printf 'validate: %s\n' "$*" >&2; }

# The venv, made once per set of pins; `.complete` marks one whose install finished.
if ! [ -f "$venv/.complete" ]; then
  rm -rf "$venv"
  mkdir -p "$cache"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      log "installing python3-venv"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      rm -rf "$venv"
      python3 -m venv "$venv"
    else
      log "python3 -m venv failed: install python3-venv"
      exit 1
    fi
  fi
  log "installing the validator into $venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-input -r "$requirements"
  touch "$venv/.complete"
fi
py=$venv/bin/python
"$py" -m kubernetes_validate --version | sed 's/^/validate: kubernetes-validate /' >&2

k_args=()
for v in $versions; do k_args+=(-k "$v"); done

# kubernetes-validate FILE: its report on stdout; fails on an error, and also on a warning (an
# unknown kind or apiVersion has no schema, which the tool itself only warns about).
kv() {
  local out status=0
  out=$("$py" -m kubernetes_validate --strict "${k_args[@]}" "$1" 2>&1) || status=$?
  printf '%s\n' "$out"
  [ "$status" = 0 ] && ! grep -qE '^(WARN|ERROR|FATAL)' <<<"$out"
}

failed=0
manifests=()
for f in "$here"/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] && continue
  manifests+=("$f")
done
[ "${#manifests[@]}" -gt 0 ] || { log "no manifests in $here"; exit 1; }

for f in "${manifests[@]}"; do
  if out=$(kv "$f"); then
    printf '%s\n' "$out" | sed 's/^/  /'
  else
    printf '%s\n' "$out" | sed 's/^/  /'
    log "FAILED: ${f#"$here"/} does not validate"
    failed=1
  fi
done

# The check must be able to fail: each broken fixture has to be rejected.
broken=("$here"/testdata/broken-*.yaml)
[ -e "${broken[0]}" ] || { log "no testdata/broken-*.yaml fixtures"; exit 1; }
for f in "${broken[@]}"; do
  if out=$(kv "$f"); then
    printf '%s\n' "$out" | sed 's/^/  /'
    log "FAILED: ${f#"$here"/} is broken on purpose but passed validation"
    failed=1
  else
    log "rejected as it should be: ${f#"$here"/}: $(grep -m1 -E '^(WARN|ERROR|FATAL)' <<<"$out" | sed "s|$here/||")"
  fi
done

# kustomization.yaml lists every manifest here, and nothing else.
listed=$("$py" - "$here/kustomization.yaml" <<'EOF'
import sys, yaml
print("\n".join(sorted(yaml.safe_load(open(sys.argv[1]))["resources"])))
EOF
)
present=$(for f in "${manifests[@]}"; do basename "$f"; done | sort)
if [ "$listed" != "$present" ]; then
  log "FAILED: kustomization.yaml resources ($(tr '\n' ' ' <<<"$listed")) differ from the manifests here ($(tr '\n' ' ' <<<"$present"))"
  failed=1
fi

if [ "$failed" = 0 ]; then
  log "ok: ${#manifests[@]} manifests valid (strict) for Kubernetes $versions; ${#broken[@]} broken fixtures rejected"
else
  exit 1
fi
