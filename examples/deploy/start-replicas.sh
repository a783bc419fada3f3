#!/usr/bin/env bash
# Starts 3 `tconst serve --durable` replicas on 127.0.0.1:8081-8083 sharing one session dir, and
# nginx in front of them on 127.0.0.1:8080 (nginx.conf here). Ctrl-C stops them all.
#
#   examples/deploy/start-replicas.sh [WORKDIR]     (default: ./tconst-deploy)
#
# TCONST (default build/examples/tconst), MODEL (default models/kjv-tconst.safetensors) and NGINX
# (default nginx) name the programs and the model.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mkdir -p "${1:-tconst-deploy}" && cd "${1:-tconst-deploy}" && pwd)"
tconst="${TCONST:-build/examples/tconst}"
model="${MODEL:-models/kjv-tconst.safetensors}"
nginx="${NGINX:-nginx}"
mkdir -p "$work/sessions" "$work/nginx/logs" "$work/nginx/tmp"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
for port in 8081 8082 8083; do
  "$tconst" serve --model "$model" --port "$port" --session-dir "$work/sessions" --durable \
    --quiet 2>"$work/replica-$port.log" &
  pids+=($!)
done
"$nginx" -p "$work/nginx" -c "$here/nginx.conf" -g 'daemon off;' &
pids+=($!)
echo "replicas on 127.0.0.1:8081-8083, nginx on http://127.0.0.1:8080; logs in $work"
wait
