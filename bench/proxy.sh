#!/usr/bin/env bash
# Proxy throughput and latency, side by side in one run, same backend and
# same load: the demo backend directly, through Spawner, through nginx and
# through configurable-http-proxy (JupyterHub's proxy).
#
#   cargo build --release -p spawner && bench/proxy.sh
#
# Installs wrk and nginx (Debian packages) and configurable-http-proxy (npm,
# into a scratch directory) when missing. Tunables: DURATION (s),
# CONNECTIONS, THREADS, PATH_UNDER_TEST.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-50}"
THREADS="${THREADS:-2}"
PATH_UNDER_TEST="${PATH_UNDER_TEST:-/api/stats}"
SPAWNER="${SPAWNER_BIN:-target/release/spawner}"
WORK="$(mktemp -d /tmp/spawner-bench.XXXXXX)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

[[ -x "$SPAWNER" ]] || { echo "build first: cargo build --release -p spawner" >&2; exit 1; }
command -v wrk >/dev/null || { apt-get install -y wrk >/dev/null || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }; }
command -v nginx >/dev/null || apt-get install -y nginx-light >/dev/null 2>&1 || apt-get install -y nginx >/dev/null
CHP="$WORK/chp/node_modules/.bin/configurable-http-proxy"
npm install --silent --prefix "$WORK/chp" configurable-http-proxy >/dev/null 2>&1
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Spawner, with one demo backend: with tokio's default worker threads (one
# per core), and with one worker thread (fewer cross-thread wakeups when the
# load generator and the backend share the cores).
start_spawner() { # worker-threads; sets SP_PORT NAME TOKEN BACKEND
  local created
  SP_PORT=$(free_port)
  SPAWNER_LOG=warn TOKIO_WORKER_THREADS="$1" "$SPAWNER" dev --listen "127.0.0.1:$SP_PORT" --sweep-interval-ms 3600000 2>>"$WORK/spawner.log" &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "127.0.0.1:$SP_PORT/healthz" >/dev/null && break; sleep 0.1; done
  created=$(curl -sf -X POST "127.0.0.1:$SP_PORT/api/v1/backends" -H 'Content-Type: application/json' -d '{"template":"demo","gracePeriodSeconds":3600}')
  NAME=$(echo "$created" | python3 -c 'import sys,json; print(json.load(sys.stdin)["backend"]["name"])')
  TOKEN=$(echo "$created" | python3 -c 'import sys,json; print(json.load(sys.stdin)["token"])')
  BACKEND=$(curl -sf "127.0.0.1:$SP_PORT/api/v1/backends/$NAME/ready?timeout=30" | python3 -c 'import sys,json; print(json.load(sys.stdin)["address"])')
}
start_spawner 1
SP1_PORT=$SP_PORT NAME1=$NAME TOKEN1=$TOKEN
start_spawner "$(nproc)"

# nginx with keep-alive to the same backend.
NG_PORT=$(free_port)
cat > "$WORK/nginx.conf" <<NGINX
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
daemon off;
events { worker_connections 10240; }
http {
  access_log off;
  upstream backend { server $BACKEND; keepalive 64; }
  server {
    listen 127.0.0.1:$NG_PORT;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
    }
  }
}
NGINX
nginx -c "$WORK/nginx.conf" -p "$WORK" &
pids+=($!)

# configurable-http-proxy to the same backend.
CHP_PORT=$(free_port); CHP_API=$(free_port)
"$CHP" --ip 127.0.0.1 --port "$CHP_PORT" --api-ip 127.0.0.1 --api-port "$CHP_API" --default-target "http://$BACKEND" --log-level error >/dev/null 2>&1 &
pids+=($!)
sleep 2

run() { # name url [header]
  local out
  if [[ $# -gt 2 ]]; then out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "$3" "$2"); else out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$2"); fi
  local rps p50 p99 errors
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
  printf "%-28s %12s %10s %10s  %s\n" "$1" "$rps" "$p50" "$p99" "$errors"
}

echo "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s GET $PATH_UNDER_TEST (demo backend at $BACKEND), $(nproc) cores"
printf "%-28s %12s %10s %10s\n" "" "requests/s" "p50" "p99"
run "direct" "http://$BACKEND$PATH_UNDER_TEST"
run "spawner (auth plugin)" "http://127.0.0.1:$SP_PORT/p/$NAME$PATH_UNDER_TEST" "Authorization: Bearer $TOKEN"
run "spawner, 1 worker thread" "http://127.0.0.1:$SP1_PORT/p/$NAME1$PATH_UNDER_TEST" "Authorization: Bearer $TOKEN1"
run "nginx $(nginx -v 2>&1 | sed 's/.*nginx\///')" "http://127.0.0.1:$NG_PORT$PATH_UNDER_TEST"
run "configurable-http-proxy" "http://127.0.0.1:$CHP_PORT$PATH_UNDER_TEST"
