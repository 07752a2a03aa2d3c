#!/usr/bin/env bash
# Tests deploy/entrypoint.sh's bootstrap in real containers, both hand-offs, without compiling klf:
# build-image.sh packages testdata/klf-stub (a busybox-sh stand-in for the klf CLI) as the image
# klf-stub:test, and then
#   - dir (compose): deploy/docker-compose.yml as it is: n1 writes /tokens/n2.token and n3.token,
#     n2 and n3 join with them, and `docker stop` makes the seed exit 0;
#   - http (Kubernetes): testdata/compose-statefulset.yml, pods klf-0..2 under the StatefulSet's
#     DNS names and restrictions (read-only root, uid 10001, no capabilities), no shared volume:
#     the peers fetch their tokens from klf-0; a container that is not klf-1 is refused klf-1's
#     token; a new ordinal (klf-3) joins by itself; a restarted peer keeps its identity; the seed
#     leaves on `docker stop` and comes back without a new `klf init`.
# The real binary's side (membership, leave, rejoin) is tested by tests/tests/containers.rs.
#
# Usage: deploy/k8s/test-bootstrap.sh     (needs docker and docker compose or docker-compose)
# About 30 s. Cleans up its projects, volumes and image, also on failure.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
deploy=$(cd "$here/.." && pwd)
export KLF_IMAGE=klf-stub:test
dir_project=klfboot-dir-$$
sts_project=klfboot-sts-$$
sts_file=$here/testdata/compose-statefulset.yml
failures=0

if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
dc() { "${compose[@]}" -f "$deploy/docker-compose.yml" -p "$dir_project" "$@"; }
sts() { "${compose[@]}" -f "$sts_file" -p "$sts_project" --profile scale "$@"; }

cleanup() {
  if [ "$failures" != 0 ]; then
    dc logs --no-color 2>&1 | grep -v '^Attaching' || true
    sts logs --no-color 2>&1 | grep -v '^Attaching' || true
  fi
  dc down -v --remove-orphans >/dev/null 2>&1 || true
  sts down -v --remove-orphans >/dev/null 2>&1 || true
  docker image rm "$KLF_IMAGE" >/dev/null 2>&1 || true
}
trap cleanup EXIT

ok() { echo "ok: $*"; }
fail() { echo "FAILED: $*" >&2; failures=$((failures + 1)); }
check() { # check DESCRIPTION COMMAND...
  local what=$1
  shift
  if "$@"; then ok "$what"; else fail "$what"; fi
}
# until_true SECONDS COMMAND...: polls every 0.2 s.
until_true() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}
# in_file PROJECT_FN SERVICE FILE: the file's content in a service's container.
in_file() { "$1" exec -T "$2" cat "$3" 2>/dev/null; }
joined() { [ -n "$(in_file "$1" "$2" /data/joined-with)" ]; }
issued_to() { # issued_to PROJECT_FN SEED PEER: the peer joined with a token the seed issued
  local token
  token=$(in_file "$1" "$3" /data/joined-with) && [ -n "$token" ] &&
    in_file "$1" "$2" /data/issued | grep -qxF "$token"
}
exit_code() { docker inspect -f '{{.State.ExitCode}}' "$("$1" ps -q "$2")"; }
count() { "$1" logs --no-color "$2" 2>&1 | grep -c "$3" || true; }

echo "== the stub image"
KLF_BIN=$here/testdata/klf-stub "$deploy/build-image.sh" --tag "$KLF_IMAGE" 2>/dev/null

echo "== dir hand-off: deploy/docker-compose.yml"
dc up -d >/dev/null 2>&1
for peer in n2 n3; do
  check "$peer joined" until_true 20 joined dc "$peer"
  check "$peer joined with a token n1 issued" issued_to dc n1 "$peer"
  check "$peer advertises $peer:7400" [ "$(in_file dc "$peer" /data/advertise)" = "$peer:7400" ]
done
check "n1 wrote n2.token and n3.token" [ "$(dc exec -T n1 ls /tokens | tr -s ' \n' ' ')" = "n2.token n3.token " ]
dc stop -t 10 n1 >/dev/null 2>&1
check "the seed exits 0 on docker stop" [ "$(exit_code dc n1)" = 0 ]
dc down -v >/dev/null 2>&1

echo "== http hand-off: the StatefulSet imitated (testdata/compose-statefulset.yml)"
sts up -d klf-0 klf-1 klf-2 >/dev/null 2>&1
domain=klf.test.svc.cluster.local
for peer in klf-1 klf-2; do
  check "$peer joined" until_true 20 joined sts "$peer"
  check "$peer joined with a token klf-0 issued" issued_to sts klf-0 "$peer"
  check "$peer advertises $peer.$domain:7400" [ "$(in_file sts "$peer" /data/advertise)" = "$peer.$domain:7400" ]
done
check "no shared token directory" [ -z "$(sts exec -T klf-0 ls /tokens 2>/dev/null)" ]

url="http://klf-0.$domain:7402/cgi-bin/join-token"
ask() { # ask QUERY [WGET_ARGS...]: from a container of the network that is no node
  local query=$1
  shift
  docker run --rm --network "${sts_project}_cluster" --entrypoint wget "$KLF_IMAGE" -q -O - "$@" \
    "$url?$query" 2>&1
}
for query in name=klf-1 name=klf-3 name=klf-0 name=rogue name=klf-01 'name=../issued' ''; do
  answer=$(ask "$query" || true)
  check "a stranger asking '$query' is refused (403)" grep -q '403 Forbidden' <<<"$answer"
done
check "a POST is refused (405)" grep -q '405' <<<"$(ask name=klf-1 --post-data x || true)"
check "the seed issued no token to strangers" [ "$(in_file sts klf-0 /data/issued | wc -l)" = 2 ]

sts up -d klf-3 >/dev/null 2>&1
check "a new ordinal, klf-3, joins by itself" until_true 20 joined sts klf-3
check "klf-3 joined with a token klf-0 issued" issued_to sts klf-0 klf-3

before=$(in_file sts klf-1 /data/joined-with)
sts restart -t 10 klf-1 >/dev/null 2>&1
check "a restarted peer comes back from its data" until_true 10 \
  sh -c "${compose[*]} -f '$sts_file' -p '$sts_project' logs klf-1 2>&1 | grep -q 'restarting the node stored'"
check "... with the same identity" [ "$(in_file sts klf-1 /data/joined-with)" = "$before" ]

sts stop -t 10 klf-0 >/dev/null 2>&1
check "the seed exits 0 on docker stop" [ "$(exit_code sts klf-0)" = 0 ]
check "the seed's node left the mesh" [ "$(count sts klf-0 'left the mesh')" = 1 ]
sts start klf-0 >/dev/null 2>&1
check "the restarted seed serves tokens again" until_true 20 \
  sh -c "[ \$(${compose[*]} -f '$sts_file' -p '$sts_project' logs klf-0 2>&1 | grep -c 'serving join tokens') = 2 ]"
check "... without a new klf init" [ "$(count sts klf-0 'creating mesh')" = 1 ]
check "the seed gave exactly three tokens" [ "$(count sts klf-0 'gave a join token')" = 3 ]

echo
if [ "$failures" = 0 ]; then
  echo "test-bootstrap: all checks passed"
else
  echo "test-bootstrap: $failures check(s) failed" >&2
  exit 1
fi
