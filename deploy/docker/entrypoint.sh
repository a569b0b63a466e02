#!/bin/sh
# Container entrypoint: `entrypoint.sh gateway|scheduler|worker|monitor`.
# Services bind 0.0.0.0 in a container, which others cannot dial back; gateways and workers
# advertise their own address (gateways: the token sink workers stream to; workers: their
# WorkerService). Default it to this container's IP so `compose --scale` replicas each
# advertise themselves; Kubernetes sets it from the pod IP instead.
set -eu
service="$1"; shift
upper=$(echo "$service" | tr a-z A-Z)
var="LLMSERVE_${upper}_ADVERTISE_HOST"
if [ -z "$(printenv "$var" || true)" ]; then
  ip=$(python -c 'import socket; print(socket.gethostbyname(socket.gethostname()))')
  export "$var=$ip"
fi
# exec: the service is PID 1's child no more, so SIGTERM reaches it and it drains.
exec python -m "llmserve.$service" "$@"
