#!/bin/sh
# Entrypoint of the klf image (busybox sh): bootstraps one node of a mesh whose nodes find each
# other by name on a container network and share a small volume for join tokens.
#
#   KLF_NAME       this node's name and host name (default: $HOSTNAME)
#   KLF_SEED       name of the first node, the one that creates the mesh (required)
#   KLF_PEERS      names of the other nodes, separated by spaces or commas (read on the seed)
#   KLF_MESH       mesh name given to `klf init` on the seed (default: klf)
#   KLF_TOKEN_TTL  lifetime of the join tokens the seed writes (default: 1h)
#   KLF_JOIN_WAIT  seconds a new node waits for its token before giving up (default: 300)
#
# Data lives in /data (keep it on a volume: it holds the node's key, and on the seed the mesh CA).
# Join tokens travel through /tokens/<name>.token. Every node listens on 0.0.0.0:7400/udp (KLF)
# and 0.0.0.0:7401/tcp (API) and advertises <name>:7400, resolved by peers at dial time.
#
# Seed: `klf init` on first start, run the node, and once it answers write a token for every peer
# that has no token file yet; SIGTERM/SIGINT are forwarded so the node leaves the mesh gracefully.
# Other nodes: restart from /data if it holds a node, else wait for /tokens/<name>.token and join.
# Either way klf gets the signal: the other nodes exec it, the seed forwards it.
set -u

# shellcheck disable=SC3028 # docker sets HOSTNAME in the container's environment
name=${KLF_NAME:-${HOSTNAME:-}}
seed=${KLF_SEED:-}
peers=${KLF_PEERS:-}
mesh=${KLF_MESH:-klf}
ttl=${KLF_TOKEN_TTL:-1h}
join_wait=${KLF_JOIN_WAIT:-300}
data=/data
tokens=/tokens

log() { echo "entrypoint[$name]: $*" >&2; }
die() { log "$*"; exit 1; }

[ -n "$name" ] || die "set KLF_NAME (this node's name)"
[ -n "$seed" ] || die "set KLF_SEED (the name of the node that creates the mesh)"
umask 077

set -- up --data "$data" --name "$name" --listen 0.0.0.0:7400 --advertise "$name:7400" \
  --api 0.0.0.0:7401

if [ "$name" != "$seed" ]; then
  if [ -f "$data/node.json" ]; then
    log "restarting the node stored in $data"
    exec klf "$@"
  fi
  token_file=$tokens/$name.token
  waited=0
  while ! [ -s "$token_file" ]; do
    if [ "$waited" -ge $((join_wait * 10)) ]; then
      die "no join token at $token_file after ${join_wait}s: is $name in KLF_PEERS of the seed $seed? (or write one there: klf token create on $seed)"
    fi
    [ "$waited" = 0 ] && log "waiting for $token_file from $seed"
    waited=$((waited + 1))
    sleep 0.1
  done
  log "joining through $seed with $token_file"
  exec klf "$@" --join "$(cat "$token_file")"
fi

# The seed.
if ! [ -f "$data/node.json" ]; then
  log "creating mesh $mesh in $data"
  klf init --data "$data" --name "$name" --mesh "$mesh" >/dev/null || die "klf init failed"
fi

pid=""
stopping=""
# shellcheck disable=SC2317 # called by the trap
forward() {
  stopping=1
  [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null
}
trap forward TERM INT

klf "$@" &
pid=$!

# Healthy once the API answers an authenticated request (bounded: 60 s).
tries=0
until klf members --data "$data" >/dev/null 2>&1; do
  [ -n "$stopping" ] && break
  kill -0 "$pid" 2>/dev/null || break
  tries=$((tries + 1))
  if [ "$tries" -ge 300 ]; then
    log "the node did not answer within 60s; writing no join tokens"
    break
  fi
  sleep 0.2
done

if [ -z "$stopping" ] && kill -0 "$pid" 2>/dev/null && [ "$tries" -lt 300 ]; then
  mkdir -p "$tokens"
  IFS=' ,'
  for peer in $peers; do
    [ "$peer" = "$name" ] && continue
    [ -e "$tokens/$peer.token" ] && continue
    tmp=$tokens/.$peer.token.tmp
    if klf token create --data "$data" --ttl "$ttl" | tail -n 1 >"$tmp" && [ -s "$tmp" ]; then
      mv "$tmp" "$tokens/$peer.token"
      log "wrote a join token for $peer (valid $ttl)"
    else
      rm -f "$tmp"
      log "could not create a join token for $peer"
    fi
  done
  unset IFS
fi

# Wait for the node; a trapped signal interrupts `wait`, so wait again until it has really exited.
status=0
while :; do
  wait "$pid"
  status=$?
  kill -0 "$pid" 2>/dev/null || break
done
log "klf exited with status $status"
exit "$status"
