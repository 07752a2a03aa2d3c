#!/usr/bin/env bash
# Builds the container image `klf:local` without pulling anything: a `FROM scratch` image whose root
# filesystem is assembled here from the release binary, the shared libraries it links (as `ldd`
# lists them, dynamic loader included), a static busybox for the entrypoint's shell, and a minimal
# /etc.
#
# Usage: deploy/build-image.sh [--no-build] [--tag TAG]
#   --no-build   use the existing target/release/klf instead of `cargo build --release -p klf-node`
#   --tag TAG    image tag (default klf:local, or $KLF_IMAGE)
#   KLF_BIN=PATH package that binary instead (implies --no-build; it must suit the host's glibc,
#                or be static, or be a script for /bin/sh like deploy/k8s/testdata/klf-stub)
#
# Idempotent: rerunning rebuilds the rootfs and lets docker reuse its cache when nothing changed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
tag=${KLF_IMAGE:-klf:local}
build=1
while [ $# -gt 0 ]; do
  case $1 in
    --no-build) build=0 ;;
    --tag) tag=${2:?--tag needs a value}; shift ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "build-image.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

log() { printf 'build-image: %s\n' "$*" >&2; }

target_dir=${CARGO_TARGET_DIR:-target}
case $target_dir in /*) ;; *) target_dir=$root/$target_dir ;; esac
bin=${KLF_BIN:-$target_dir/release/klf}
if [ "$build" = 1 ] && [ -z "${KLF_BIN:-}" ]; then
  log "cargo build --release -p klf-node"
  (cd "$root" && "${CARGO:-cargo}" build --release -p klf-node)
fi
[ -x "$bin" ] || { echo "build-image.sh: no binary at $bin (build it, or drop --no-build)" >&2; exit 1; }

command -v docker >/dev/null || { echo "build-image.sh: docker is not installed" >&2; exit 1; }

busybox=/bin/busybox
if ! [ -x "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then
  # Debian's busybox-static installs a static /bin/busybox (a dynamic one would need its own libs).
  log "installing busybox-static"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
fi
if ldd "$busybox" >/dev/null 2>&1; then
  echo "build-image.sh: $busybox is not static; install busybox-static" >&2
  exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/klf-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
owned=$work/owned
mkdir -p "$rootfs"/{bin,etc,usr/local/bin} "$owned"/{data,tokens}
install -d -m 1777 "$rootfs/tmp"

# The binary, without debug symbols (the image does not need them; the host copy keeps them).
cp "$bin" "$rootfs/usr/local/bin/klf"
if command -v strip >/dev/null && ! strip --strip-debug "$rootfs/usr/local/bin/klf" 2>/dev/null; then
  log "$bin is not an ELF binary strip knows; packaged as it is"
fi
chmod 0755 "$rootfs/usr/local/bin/klf"

# Its shared libraries and the dynamic loader, at the paths the binary asks for.
# ldd prints "libx.so => /path/libx.so (0x…)" and "/lib64/ld-linux-x86-64.so.2 (0x…)".
# ldd fails on a static binary or a script ("not a dynamic executable"): then there are none.
libs=$({ ldd "$bin" 2>/dev/null || true; } | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
[ -n "$libs" ] || log "ldd lists no libraries for $bin (fine for a static binary)"
for lib in $libs; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done

# busybox and the applets the entrypoint uses (wget, timeout, nslookup and httpd for the `http`
# token hand-off of Kubernetes; plus ls/ps/env for `docker exec` debugging).
cp "$busybox" "$rootfs/bin/busybox"
for applet in sh cat tail mv rm mkdir sleep wget timeout nslookup httpd ls ps env; do
  ln -sf busybox "$rootfs/bin/$applet"
done
cp "$here/entrypoint.sh" "$rootfs/entrypoint.sh"
chmod 0755 "$rootfs/entrypoint.sh"
# The seed's httpd (`http` hand-off) runs the entrypoint as a CGI to hand out join tokens.
mkdir -p "$rootfs/www/cgi-bin"
ln -s /entrypoint.sh "$rootfs/www/cgi-bin/join-token"

# A minimal /etc: the unprivileged user the node runs as, and name resolution through docker's DNS.
cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
klf:x:10001:10001:klf:/data:/bin/sh
nobody:x:65534:65534:nobody:/:/bin/false
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
klf:x:10001:
nogroup:x:65534:
EOF
echo 'hosts: files dns' >"$rootfs/etc/nsswitch.conf"

# Smoke check of the rootfs before docker sees it: the loader and libraries are complete.
if command -v chroot >/dev/null && [ "$(id -u)" = 0 ]; then
  chroot "$rootfs" /usr/local/bin/klf --version >/dev/null ||
    { echo "build-image.sh: klf does not start inside the assembled rootfs" >&2; exit 1; }
fi

log "docker build -t $tag"
previous=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
# The classic builder: it needs no buildx plugin and pulls nothing for FROM scratch. Its output
# (with recent clients, a deprecation notice) is shown only if the build fails.
if ! out=$(DOCKER_BUILDKIT=0 docker build -q -t "$tag" -f "$here/Dockerfile.local" "$work" 2>&1); then
  printf '%s\n' "$out" >&2
  echo "build-image.sh: docker build failed" >&2
  exit 1
fi
current=$(docker image inspect -f '{{.Id}}' "$tag")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
  # The image this tag named before is now untagged; drop it unless a container still uses it.
  docker image rm "$previous" >/dev/null 2>&1 || true
fi

size=$(docker image inspect -f '{{.Size}}' "$tag")
echo "image $tag: $((size / 1024 / 1024)) MiB ($size bytes)"
