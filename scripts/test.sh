#!/usr/bin/env bash
# Run the suite twice: on SQLite (the embedded default) and on PostgreSQL.
# Soak tests (marker soak: minutes of deliberate waiting) are left out; `make soak` runs them.
# Redis, Mosquitto and Chromium tests run in both passes' marked subsets.
# Under CI=true a skipped service test fails the run (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

bash scripts/services.sh

export REDIS_TEST_URL="${REDIS_TEST_URL:-redis://127.0.0.1:6379/0}"
export MQTT_TEST_URL="${MQTT_TEST_URL:-mqtt://127.0.0.1:1883}"
PG_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"

status=0
echo "== Pass 1: SQLite =="
env -u DATABASE_URL -u REDIS_URL "$PY" -m pytest -m "not soak" "$@" || status=1

echo "== Pass 2: PostgreSQL ($PG_URL) =="
env -u REDIS_URL DATABASE_URL="$PG_URL" "$PY" -m pytest -m "not sqlite_only and not browser and not soak" "$@" || status=1

# The public paths behind every fast path on private internals (dashboard/fastpaths/) stay
# correct: the live, ingest and fault tests again with all fast paths off, on PostgreSQL.
echo "== Pass 3: fast paths off (PULSEBOARD_FAST_PATHS=0), live, ingest and fault tests =="
env -u REDIS_URL DATABASE_URL="$PG_URL" PULSEBOARD_FAST_PATHS=0 "$PY" -m pytest -m "not sqlite_only and not browser and not soak" \
  tests/test_fanout.py tests/test_consumer.py tests/test_workers.py tests/test_live_reconcile.py \
  tests/test_end_to_end.py tests/test_ingest_api_more.py tests/test_faults_live.py tests/test_sse.py \
  tests/test_subscriptions.py "$@" || status=1

exit $status
