#!/usr/bin/env bash
# What the benchmarks compare against, beyond the test services: InfluxDB 1.x
# (Debian package `influxdb`) for bench/ingest.py. Installs it when run as
# root; otherwise says what to install. The bench skips that row without it.
set -u
if ! command -v influxd >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing influxdb from Debian packages (bench/ingest.py's baseline)..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq influxdb >/dev/null) \
      || echo "warning: could not install influxdb; bench/ingest.py skips its row"
  else
    echo "note: influxd missing; install the Debian package influxdb for bench/ingest.py's baseline row"
  fi
fi
# The Debian package starts a system influxd on :8086; the bench runs its own on a free port.
exit 0
