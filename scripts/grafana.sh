#!/usr/bin/env bash
# `make grafana`: Prometheus and Grafana for the `ray start` cluster on this machine, as Ray documents
# (https://docs.ray.io/en/latest/cluster/metrics.html), with Ray's dashboards plus ours
# (configs/grafana/coati_rlhf.json: throughput per maker, buffer, staleness, reward/KL, losses, sync,
# stage seconds, TFLOP/s). Needs the `prometheus` and `grafana-server` (or `grafana`) binaries:
#   Prometheus: `ray metrics launch-prometheus` downloads and starts one, or https://prometheus.io/download/
#   Grafana:    https://grafana.com/grafana/download (Debian: the grafana package from Grafana's apt repo)
# For the Ray dashboard's Metrics page to embed the graphs, start the head with
#   RAY_GRAFANA_HOST=http://127.0.0.1:3000 RAY_PROMETHEUS_HOST=http://127.0.0.1:9090 ray start --head
set -euo pipefail
cd "$(dirname "$0")/.."
metrics=/tmp/ray/session_latest/metrics
if [ ! -d "$metrics/grafana" ]; then
  echo "error: no Ray cluster on this machine ($metrics/grafana is missing); start one first: ray start --head" >&2
  exit 2
fi
mkdir -p runs/grafana
cp configs/grafana/coati_rlhf.json "$metrics/grafana/dashboards/coati_rlhf.json"
echo "dashboard: $metrics/grafana/dashboards/coati_rlhf.json (Ray's provisioning loads it into the Ray folder)"
started=0
if command -v prometheus >/dev/null 2>&1; then
  prometheus --config.file="$metrics/prometheus/prometheus.yml" --web.listen-address=127.0.0.1:9090 \
    --storage.tsdb.path=runs/grafana/prometheus-data > runs/grafana/prometheus.log 2>&1 &
  echo "Prometheus: http://127.0.0.1:9090 (log: runs/grafana/prometheus.log)"
  started=$((started + 1))
else
  echo "prometheus not found: run \`ray metrics launch-prometheus\` (it downloads Prometheus) or install it from https://prometheus.io/download/"
fi
grafana_bin=$(command -v grafana-server || command -v grafana || true)
if [ -n "$grafana_bin" ]; then
  home=${GRAFANA_HOME:-/usr/share/grafana}
  sub=""; [ "$(basename "$grafana_bin")" = "grafana" ] && sub="server"
  "$grafana_bin" $sub --homepath "$home" --config "$metrics/grafana/grafana.ini" \
    cfg:server.http_addr=127.0.0.1 cfg:paths.data="$PWD/runs/grafana/data" > runs/grafana/grafana.log 2>&1 &
  echo "Grafana: http://127.0.0.1:3000/d/coati-rlhf (log: runs/grafana/grafana.log)"
  started=$((started + 1))
else
  echo "grafana-server not found: install Grafana from https://grafana.com/grafana/download, then run make grafana again"
fi
[ "$started" -eq 2 ] || exit 2
