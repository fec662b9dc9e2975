"""Create the demo dashboards (this host, the IoT fleet, the market feed) and a few demo alert rules; idempotent."""

from __future__ import annotations

import math
import random
import socket

from django.core.management.base import BaseCommand
from django.db import transaction

from collectors.base import slugify_key
from dashboard import layout, storage
from dashboard.models import AlertRule, Dashboard, Panel
from dashboard.timeutil import US, now_us
from dashboard.validation import Reading

WARN, BAD, OK = "#f5a524", "#f3616d", "#3ccf91"
HISTORY_STEP_S = 300  # synthetic history: one sample every 5 minutes


def host_board(host: str) -> tuple[dict, list[dict]]:
    h = f"host.{host}"
    pct = [{"value": 75, "color": WARN}, {"value": 90, "color": BAD}]
    return (
        {"slug": "host", "title": f"Host {host}", "description": "CPU, memory, load and network of this machine"},
        [
            {
                "title": "CPU",
                "kind": "stat",
                "metrics": [f"{h}.cpu.total"],
                "options": {"unit": "%", "thresholds": pct},
                "x": 0,
                "y": 0,
                "w": 3,
                "h": 2,
            },
            {
                "title": "Memory used",
                "kind": "stat",
                "metrics": [f"{h}.mem.used_pct"],
                "options": {"unit": "%", "thresholds": pct},
                "x": 3,
                "y": 0,
                "w": 3,
                "h": 2,
            },
            {
                "title": "Load (1 min)",
                "kind": "stat",
                "metrics": [f"{h}.load.1m"],
                "options": {},
                "x": 6,
                "y": 0,
                "w": 3,
                "h": 2,
            },
            {
                "title": "Disk used",
                "kind": "stat",
                "metrics": [f"{h}.disk.used_pct"],
                "options": {"unit": "%", "thresholds": pct},
                "x": 9,
                "y": 0,
                "w": 3,
                "h": 2,
            },
            {
                "title": "CPU total",
                "kind": "timeseries",
                "metrics": [f"{h}.cpu.total"],
                "options": {"unit": "%", "thresholds": [{"value": 90, "color": BAD}]},
                "x": 0,
                "y": 2,
                "w": 6,
                "h": 4,
            },
            {
                "title": "CPU per core",
                "kind": "timeseries",
                "metrics": [f"{h}.cpu.core*"],
                "options": {"unit": "%"},
                "x": 6,
                "y": 2,
                "w": 6,
                "h": 4,
            },
            {
                "title": "Load average",
                "kind": "timeseries",
                "metrics": [f"{h}.load.1m", f"{h}.load.5m", f"{h}.load.15m"],
                "options": {},
                "x": 0,
                "y": 6,
                "w": 6,
                "h": 4,
            },
            {
                "title": "Network",
                "kind": "timeseries",
                "metrics": [f"{h}.net.rx_bps", f"{h}.net.tx_bps"],
                "options": {"unit": "B/s"},
                "x": 6,
                "y": 6,
                "w": 6,
                "h": 4,
            },
            {
                "title": "All host metrics",
                "kind": "table",
                "metrics": [f"{h}.*"],
                "options": {},
                "x": 0,
                "y": 10,
                "w": 12,
                "h": 5,
            },
        ],
    )


def iot_board() -> tuple[dict, list[dict]]:
    temp = [{"value": 28, "color": WARN}, {"value": 30, "color": BAD}]
    return (
        {"slug": "iot-fleet", "title": "IoT fleet", "description": "Temperature, humidity and battery of every sensor"},
        [
            {
                "title": "Sensor 01 temperature",
                "kind": "stat",
                "metrics": ["iot.sensor-01.temperature"],
                "options": {"unit": "°C", "thresholds": temp},
                "x": 0,
                "y": 0,
                "w": 4,
                "h": 2,
            },
            {
                "title": "Sensor 01 battery",
                "kind": "stat",
                "metrics": ["iot.sensor-01.battery"],
                "options": {
                    "unit": "%",
                    "thresholds": [
                        {"value": 0, "color": BAD},
                        {"value": 15, "color": WARN},
                        {"value": 30, "color": OK},
                    ],
                },
                "x": 4,
                "y": 0,
                "w": 4,
                "h": 2,
            },
            {
                "title": "Sensor 01 humidity",
                "kind": "stat",
                "metrics": ["iot.sensor-01.humidity"],
                "options": {"unit": "%"},
                "x": 8,
                "y": 0,
                "w": 4,
                "h": 2,
            },
            {
                "title": "Temperature",
                "kind": "timeseries",
                "metrics": ["iot.*.temperature"],
                "options": {"unit": "°C", "thresholds": [{"value": 30, "color": BAD}]},
                "x": 0,
                "y": 2,
                "w": 8,
                "h": 5,
            },
            {
                "title": "Batteries",
                "kind": "table",
                "metrics": ["iot.*.battery"],
                "options": {
                    "unit": "%",
                    "thresholds": [
                        {"value": 0, "color": BAD},
                        {"value": 15, "color": WARN},
                        {"value": 30, "color": OK},
                    ],
                },
                "x": 8,
                "y": 2,
                "w": 4,
                "h": 5,
            },
            {
                "title": "Humidity",
                "kind": "timeseries",
                "metrics": ["iot.*.humidity"],
                "options": {"unit": "%"},
                "x": 0,
                "y": 7,
                "w": 12,
                "h": 4,
            },
        ],
    )


def market_board() -> tuple[dict, list[dict]]:
    return (
        {"slug": "markets", "title": "Markets", "description": "Simulated market feed: prices, spreads and volume"},
        [
            {
                "title": "BTC-USD last",
                "kind": "stat",
                "metrics": ["market.btc-usd.last"],
                "options": {"unit": "USD"},
                "x": 0,
                "y": 0,
                "w": 3,
                "h": 2,
            },
            {
                "title": "ETH-USD last",
                "kind": "stat",
                "metrics": ["market.eth-usd.last"],
                "options": {"unit": "USD"},
                "x": 3,
                "y": 0,
                "w": 3,
                "h": 2,
            },
            {
                "title": "Last prices",
                "kind": "table",
                "metrics": ["market.*.last"],
                "options": {},
                "x": 6,
                "y": 0,
                "w": 6,
                "h": 2,
            },
            {
                "title": "BTC-USD",
                "kind": "candlestick",
                "metrics": ["market.btc-usd.last"],
                "options": {"unit": "USD"},
                "x": 0,
                "y": 2,
                "w": 6,
                "h": 5,
            },
            {
                "title": "BTC-USD bid / ask",
                "kind": "timeseries",
                "metrics": ["market.btc-usd.bid", "market.btc-usd.ask"],
                "options": {"unit": "USD"},
                "x": 6,
                "y": 2,
                "w": 6,
                "h": 5,
            },
            {
                "title": "Volume",
                "kind": "timeseries",
                "metrics": ["market.*.volume"],
                "options": {},
                "x": 0,
                "y": 7,
                "w": 12,
                "h": 4,
            },
        ],
    )


def pulseboard_board() -> tuple[dict, list[dict]]:
    """Pulseboard's own health, from the scrape of its /metrics that `serve` runs (the prometheus collector)."""
    p = "pulseboard.pulseboard_"

    def panel(title: str, kind: str, metrics: list[str], x: int, y: int, w: int, h: int, **options) -> dict:
        return {"title": title, "kind": kind, "metrics": metrics, "options": options, "x": x, "y": y, "w": w, "h": h}

    return (
        {"slug": "pulseboard", "title": "Pulseboard", "description": "This server's own health, scraped from /metrics"},
        [
            panel(
                "Scrape up",
                "stat",
                ["pulseboard.scrape.up"],
                0,
                0,
                3,
                2,
                thresholds=[{"value": 0, "color": BAD}, {"value": 1, "color": OK}],
            ),
            panel("Live connections", "stat", [f"{p}connections"], 3, 0, 3, 2),
            panel("Subscriptions", "stat", [f"{p}subscriptions"], 6, 0, 3, 2),
            panel(
                "Publish failures /s",
                "stat",
                [f"{p}publish_failures_total.rate"],
                9,
                0,
                3,
                2,
                thresholds=[{"value": 0.01, "color": BAD}],
            ),
            panel(
                "Samples stored /s",
                "timeseries",
                [f"{p}ingest_accepted_total.rate", f"{p}ingest_duplicates_total.rate"],
                0,
                2,
                6,
                4,
            ),
            panel("Samples rejected /s", "timeseries", [f"{p}ingest_rejected_total.code:*.rate"], 6, 2, 6, 4),
            panel(
                "Samples sent live /s",
                "timeseries",
                [f"{p}samples_sent_total.rate", f"{p}samples_dropped_total.rate"],
                0,
                6,
                6,
                4,
            ),
            panel("Write batch (mean s)", "timeseries", [f"{p}write_batch_seconds.mean"], 6, 6, 6, 4, unit="s"),
        ],
    )


def demo_rules(host: str) -> list[dict]:
    return [
        {
            "name": "Server room too hot",
            "metric_pattern": "iot.*.temperature",
            "condition": "above",
            "threshold": 30.0,
            "for_s": 10,
            "severity": "critical",
        },
        {
            "name": "Sensor battery low",
            "metric_pattern": "iot.*.battery",
            "condition": "below",
            "threshold": 15.0,
            "for_s": 60,
            "severity": "warning",
        },
        {
            "name": "Sensor offline",
            "metric_pattern": "iot.*.temperature",
            "condition": "nodata",
            "nodata_s": 120,
            "severity": "warning",
        },
        {
            "name": "CPU saturated",
            "metric_pattern": f"host.{host}.cpu.total",
            "condition": "above",
            "threshold": 95.0,
            "for_s": 60,
            "severity": "warning",
        },
    ]


def synthetic_history(host: str, days: int, end_us: int) -> list[Reading]:
    """Return plausible 5-minute readings for a few demo metrics over the last `days` days (charts of long ranges)."""
    rng = random.Random(42)
    readings: list[Reading] = []
    start = end_us - days * 86400 * US
    price = 65000.0
    for ts in range(start, end_us - 600 * US, HISTORY_STEP_S * US):
        day = (ts / US / 86400) % 1
        daily = math.sin(2 * math.pi * (day - 0.3))
        readings.append(
            Reading(
                f"host.{host}",
                "cpu.total",
                ts,
                max(0.0, min(100.0, 30 + 20 * daily + rng.gauss(0, 6))),
                "%",
                "gauge",
                "host",
            )
        )
        readings.append(
            Reading(f"host.{host}", "mem.used_pct", ts, 55 + 8 * daily + rng.gauss(0, 1), "%", "gauge", "host")
        )
        readings.append(
            Reading(f"host.{host}", "load.1m", ts, max(0.0, 1.2 + daily + rng.gauss(0, 0.3)), "", "gauge", "host")
        )
        readings.append(
            Reading("iot.sensor-01", "temperature", ts, 22 + 3 * daily + rng.gauss(0, 0.3), "°C", "gauge", "device")
        )
        price *= math.exp(rng.gauss(0, 0.004))
        readings.append(Reading("market.btc-usd", "last", ts, round(price, 2), "USD", "price", "feed"))
    return readings


class Command(BaseCommand):
    help = (
        "Create or update the demo dashboards for this host (host.<hostname>), the IoT fleet (iot.sensor-NN) and "
        "the market feed (market.*), and the demo alert rules. Running it again changes nothing that exists."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--host", default=socket.gethostname(), help="host name of the system collector (default: this machine)"
        )
        parser.add_argument("--reset", action="store_true", help="put the demo dashboards' panels back as shipped")
        parser.add_argument(
            "--history-days", type=int, default=0, help="also store N days of synthetic 5-minute history (demos, tests)"
        )

    def handle(self, *args, host: str, reset: bool, history_days: int, **options) -> None:
        host = slugify_key(host)
        created = []
        with transaction.atomic():
            for fields, panels in (host_board(host), iot_board(), market_board(), pulseboard_board()):
                board, new = Dashboard.objects.get_or_create(slug=fields["slug"], defaults=fields)
                if new or reset or not board.panels.exists():
                    board.panels.all().delete()
                    checked = layout.check_layout(panels)  # the one layout schema, as the admin and API use
                    Panel.objects.bulk_create([Panel(dashboard=board, **layout.as_fields(p)) for p in checked])
                    created.append(board.slug)
            for rule in demo_rules(host):
                AlertRule.objects.get_or_create(name=rule["name"], defaults=rule)
        if history_days > 0:
            readings = synthetic_history(host, history_days, now_us())
            for i in range(0, len(readings), 5000):
                storage.store(readings[i : i + 5000])
            self.stdout.write(f"Stored {len(readings)} synthetic readings over {history_days} days.")
        self.stdout.write(f"Demo dashboards ready ({', '.join(created) or 'all existed'}): /d/")
