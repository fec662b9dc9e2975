"""Map a collector kind (as written in collectors.toml) to its class.

This is the only list of collectors; everything else looks kinds up here.
Classes are imported lazily so a missing optional client only matters to
configurations that use it.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from collectors.base import Collector

COLLECTORS: dict[str, str] = {
    "system": "collectors.system.SystemCollector",
    "iot_sim": "collectors.iot_sim.IotFleetSimulator",
    "market_sim": "collectors.market_sim.MarketSimulator",
    "counter": "collectors.counter.CounterCollector",
    "mqtt": "collectors.mqtt.MqttCollector",
    "ticker": "collectors.ticker.TickerCollector",
    "replay": "collectors.replay.ReplayCollector",
    "prometheus": "collectors.prometheus.PrometheusCollector",
}


def collector_class(kind: str) -> type[Collector]:
    """Return the collector class for a kind, or raise KeyError naming the known kinds."""
    try:
        path = COLLECTORS[kind]
    except KeyError:
        raise KeyError(f"unknown collector kind {kind!r}; known kinds: {', '.join(sorted(COLLECTORS))}") from None
    module, _, name = path.rpartition(".")
    return getattr(import_module(module), name)


def build(config: dict[str, Any]) -> Collector:
    """Instantiate a collector from one [[collectors]] table of the TOML config."""
    options = dict(config)
    kind = options.pop("kind", None)
    if not kind:
        raise KeyError("every [[collectors]] entry needs a 'kind'")
    return collector_class(kind)(**options)
