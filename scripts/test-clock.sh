#!/usr/bin/env bash
# Run the clock-sensitive tests (those taking the `clock` fixture: pytest -m clock)
# with this process's clock moved to each edge time, on SQLite and on PostgreSQL.
# PULSEBOARD_TEST_CLOCK moves tests/conftest.py's clock fixture (time-machine,
# ticking on from there); PostgreSQL's own now() and subprocess servers keep the
# real clock, which is why these tests use neither. Not part of `make test`
# (about 1 min per edge on SQLite and 3-5 min on PostgreSQL on a busy machine).
#
#   bash scripts/test-clock.sh                 # every edge below, both databases
#   EDGES="2027-01-01T00:05:00Z" bash scripts/test-clock.sh -x   # one edge; extra args go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

# UTC day and year boundaries, and 30 s before each DST change of the zones
# users pick most (Europe: last Sunday of March and October at 01:00 UTC;
# America/New_York: second Sunday of March at 07:00 UTC, first Sunday of
# November at 06:00 UTC). The clock ticks, so each run crosses its edge.
DEFAULT_EDGES="2027-01-01T00:05:00Z 2026-12-31T23:59:30Z 2026-03-29T00:59:30Z 2026-10-25T00:59:30Z 2026-03-08T06:59:30Z 2026-11-01T05:59:30Z"
EDGES="${EDGES:-$DEFAULT_EDGES}"

bash scripts/services.sh

export REDIS_TEST_URL="${REDIS_TEST_URL:-redis://127.0.0.1:6379/0}"
export MQTT_TEST_URL="${MQTT_TEST_URL:-mqtt://127.0.0.1:1883}"
PG_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"

status=0
failed=()
for edge in $EDGES; do
  echo "== $edge, SQLite =="
  if ! env -u DATABASE_URL -u REDIS_URL PULSEBOARD_TEST_CLOCK="$edge" "$PY" -m pytest -m "clock and not browser" -q "$@"; then
    status=1 failed+=("$edge SQLite")
  fi
  echo "== $edge, PostgreSQL ($PG_URL) =="
  if ! env -u REDIS_URL DATABASE_URL="$PG_URL" PULSEBOARD_TEST_CLOCK="$edge" \
    "$PY" -m pytest -m "clock and not sqlite_only and not browser" -q "$@"; then
    status=1 failed+=("$edge PostgreSQL")
  fi
done

if [ $status -ne 0 ]; then
  echo "failed at: ${failed[*]}"
fi
exit $status
