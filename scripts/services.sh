#!/usr/bin/env bash
# Make sure the services the tests use are up, and Chromium is installed.
# Starts what is installed but stopped; installs Chromium from Debian when
# running as root. Never fails: tests skip (or, under CI=true, fail) with a reason.
set -u
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! up 5432 && command -v pg_ctlcluster >/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
if ! up 6379 && command -v redis-server >/dev/null; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no || true
fi
if ! up 1883 && command -v mosquitto >/dev/null; then
  mosquitto -d -c /etc/mosquitto/mosquitto.conf || true
fi
if ! command -v chromium >/dev/null || ! command -v promtool >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing chromium and promtool from Debian packages..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver prometheus >/dev/null) \
      || echo "warning: could not install chromium/prometheus; browser and promtool tests will skip"
  else
    echo "note: chromium or promtool missing; install packages chromium and prometheus to run those tests"
  fi
fi
for i in 1 2 3 4 5 6 7 8 9 10; do up 5432 && up 6379 && break; sleep 0.5; done
exit 0
