#!/bin/sh
# Entrypoint of the klf image (busybox sh): bootstraps one node of a mesh whose nodes find each
# other by name, in docker compose and in a Kubernetes StatefulSet alike.
#
#   KLF_NAME           this node's name (default: $HOSTNAME, which is `klf-N` in a StatefulSet)
#   KLF_SEED           name of the first node, the one that creates the mesh (required)
#   KLF_PEERS          names of the other nodes, separated by spaces or commas (read on the seed)
#   KLF_MESH           mesh name given to `klf init` on the seed (default: klf)
#   KLF_TOKEN_TTL      lifetime of the join tokens the seed creates (default: 1h)
#   KLF_JOIN_WAIT      seconds a new node waits for its token before giving up (default: 300)
#   KLF_DOMAIN         DNS suffix of the nodes' host names: node NAME is reached at NAME.KLF_DOMAIN
#                      (default: none, NAME alone; in Kubernetes: SERVICE.NAMESPACE.svc.cluster.local)
#   KLF_TOKEN_HANDOFF  how join tokens travel from the seed to the others: `dir` (default) or `http`
#   KLF_TOKENS         the directory of the `dir` hand-off (default: /tokens)
#   KLF_TOKEN_PORT     the TCP port of the `http` hand-off (default: 7402)
#
# Data lives in /data (keep it on a volume: it holds the node's key, and on the seed the mesh CA).
# Every node listens on 0.0.0.0:7400/udp (KLF) and 0.0.0.0:7401/tcp (API) and advertises
# <host>:7400, where <host> is its name (plus .KLF_DOMAIN); peers resolve it at dial time.
#
# Seed: `klf init` on first start, run the node, and once it answers hand out join tokens;
# SIGTERM/SIGINT are forwarded so the node leaves the mesh gracefully.
# Other nodes: restart from /data if it holds a node, else obtain a join token and join.
# Either way klf gets the signal: the other nodes exec it, the seed forwards it.
#
# The two hand-offs (the bootstrap is otherwise the same):
# - dir (compose): the seed writes a token for every name in KLF_PEERS that has no file yet to
#   KLF_TOKENS/<name>.token, on a volume all nodes share; a new node waits for its file.
# - http (Kubernetes, where pods share no volume): the seed serves GET
#   /cgi-bin/join-token?name=NAME on KLF_TOKEN_PORT (busybox httpd running this script as a CGI).
#   It creates a fresh one-time token only for a peer name (in KLF_PEERS, or when that is empty any
#   ordinal SEEDPREFIX-N of the seed's StatefulSet) whose host name resolves to the address the
#   request comes from: only the pod that DNS calls klf-1 gets klf-1's token. A new node asks
#   until it gets one. No shared secret, no volume and no Kubernetes API access are needed.
set -u

# shellcheck disable=SC3028 # docker and Kubernetes set HOSTNAME in the container's environment
name=${KLF_NAME:-${HOSTNAME:-}}
seed=${KLF_SEED:-}
peers=${KLF_PEERS:-}
mesh=${KLF_MESH:-klf}
ttl=${KLF_TOKEN_TTL:-1h}
join_wait=${KLF_JOIN_WAIT:-300}
domain=${KLF_DOMAIN:-}
handoff=${KLF_TOKEN_HANDOFF:-dir}
tokens=${KLF_TOKENS:-/tokens}
token_port=${KLF_TOKEN_PORT:-7402}
data=/data
www=/www # the image's httpd root: /www/cgi-bin/join-token is a link to this script

log() { echo "entrypoint[$name]: $*" >&2; }
die() { log "$*"; exit 1; }

# The host name node $1 is reached at.
host() {
  if [ -n "$domain" ]; then echo "$1.$domain"; else echo "$1"; fi
}

# Seconds since boot (busybox has no `date +%s` applet linked; /proc is always there).
now() {
  read -r up _ </proc/uptime
  echo "${up%.*}"
}

# Whether the seed hands a join token to node $1.
is_peer() {
  case $1 in '' | *[!a-z0-9.-]* | "$seed") return 1 ;; esac
  if [ -n "$peers" ]; then
    listed=""
    IFS=' ,'
    for peer in $peers; do
      [ "$peer" = "$1" ] && listed=1
    done
    unset IFS
    [ -n "$listed" ]
    return
  fi
  # No list: the seed is PREFIX-0 of a StatefulSet and its peers are PREFIX-1, PREFIX-2, ...
  prefix=${seed%-0}
  [ "$prefix" != "$seed" ] || return 1
  ordinal=${1#"$prefix"-}
  [ "$ordinal" != "$1" ] || return 1
  case $ordinal in '' | 0 | 0* | *[!0-9]*) return 1 ;; esac
}

# The addresses host $1 resolves to, one a line (busybox nslookup: "Name:" then "Address: A").
resolve() {
  nslookup "$1" 2>/dev/null | {
    named=""
    while read -r key value _; do
      case $key in
        Name:) named=1 ;;
        Address:) [ -n "$named" ] && echo "$value" ;;
      esac
    done
  }
}

# The `http` hand-off's server side, run by busybox httpd as a CGI with the seed's environment.
serve_token() {
  reply() { printf 'Status: %s\r\nContent-Type: text/plain\r\n\r\n%s\n' "$1" "$2"; }
  peer=${QUERY_STRING#name=}
  remote=${REMOTE_ADDR:-}
  remote=${remote#[}
  remote=${remote%]}
  remote=${remote#::ffff:}
  if [ "${REQUEST_METHOD:-}" != GET ]; then
    reply '405 Method Not Allowed' 'GET /cgi-bin/join-token?name=NAME'
    return
  fi
  if ! is_peer "$peer"; then
    log "refused a join token to $remote: '$peer' is not a peer of $seed"
    reply '403 Forbidden' "'$peer' is not a peer of $seed"
    return
  fi
  found=""
  for address in $(resolve "$(host "$peer")"); do
    [ "$address" = "$remote" ] && found=1
  done
  if [ -z "$found" ]; then
    log "refused a join token for $peer to $remote: $(host "$peer") does not resolve to it"
    reply '403 Forbidden' "$(host "$peer") does not resolve to $remote"
    return
  fi
  token=$(klf token create --data "$data" --ttl "$ttl" 2>/dev/null | tail -n 1)
  if [ -z "$token" ]; then
    log "could not create a join token for $peer"
    reply '503 Service Unavailable' "$seed could not create a join token"
    return
  fi
  log "gave a join token to $peer at $remote (valid $ttl)"
  reply '200 OK' "$token"
}

# The seed's httpd runs this script as /www/cgi-bin/join-token.
if [ -n "${GATEWAY_INTERFACE:-}" ]; then
  serve_token
  exit 0
fi

[ -n "$name" ] || die "set KLF_NAME (this node's name)"
[ -n "$seed" ] || die "set KLF_SEED (the name of the node that creates the mesh)"
case $handoff in dir | http) ;; *) die "KLF_TOKEN_HANDOFF is '$handoff': use dir or http" ;; esac
umask 077

set -- up --data "$data" --name "$name" --listen 0.0.0.0:7400 --advertise "$(host "$name"):7400" \
  --api 0.0.0.0:7401

# A new node's token, on stdout (exits if none comes within KLF_JOIN_WAIT seconds).
wait_token_file() {
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
  cat "$token_file"
}

fetch_token() {
  url="http://$(host "$seed"):$token_port/cgi-bin/join-token?name=$name"
  start=$(now)
  said=""
  while :; do
    # (busybox 1.35's `wget -T` crashes, hence `timeout`.)
    if token=$(timeout 10 wget -q -O - "$url" 2>/dev/null) && [ -n "$token" ]; then
      log "joining through $seed with a token from $url"
      echo "$token"
      return
    fi
    elapsed=$(($(now) - start))
    if [ "$elapsed" -ge "$join_wait" ]; then
      die "no join token from $url after ${join_wait}s: is $seed running, and does $(host "$name") resolve to this pod? (the seed's log says why it refused)"
    fi
    if [ -z "$said" ] || [ $((elapsed - said)) -ge 30 ]; then
      log "waiting for a join token from $url"
      said=$elapsed
    fi
    sleep 1
  done
}

if [ "$name" != "$seed" ]; then
  if [ -f "$data/node.json" ]; then
    log "restarting the node stored in $data"
    exec klf "$@"
  fi
  if [ "$handoff" = http ]; then
    token=$(fetch_token) || exit 1
  else
    token=$(wait_token_file) || exit 1
  fi
  exec klf "$@" --join "$token"
fi

# The seed.
if ! [ -f "$data/node.json" ]; then
  log "creating mesh $mesh in $data"
  klf init --data "$data" --name "$name" --mesh "$mesh" >/dev/null || die "klf init failed"
fi

pid=""
server=""
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
    log "the node did not answer within 60s; handing out no join tokens"
    break
  fi
  sleep 0.2
done

# Write a token file for every peer that has none yet.
write_token_files() {
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
}

# Serve tokens to peers that ask, for as long as the node runs (new ordinals, rebuilt volumes).
start_token_server() {
  httpd -f -p "$token_port" -h "$www" &
  server=$!
  log "serving join tokens to peers on port $token_port"
}

if [ -z "$stopping" ] && kill -0 "$pid" 2>/dev/null && [ "$tries" -lt 300 ]; then
  if [ "$handoff" = http ]; then
    start_token_server
  else
    write_token_files
  fi
fi

# Wait for the node; a trapped signal interrupts `wait`, so wait again until it has really exited.
status=0
while :; do
  wait "$pid"
  status=$?
  kill -0 "$pid" 2>/dev/null || break
done
[ -n "$server" ] && kill "$server" 2>/dev/null
log "klf exited with status $status"
exit "$status"
