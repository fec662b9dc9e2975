"""Two separate processes pass sample batches through the real Redis channel layer."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PUBLISHER = textwrap.dedent(
    """
    import asyncio, os, django
    os.environ["DJANGO_SETTINGS_MODULE"] = "monitor.settings"
    django.setup()
    from dashboard import events

    async def main():
        event = events.SampleBatch(series={"t.k": [[1, 2], [1.5, 2.5]]}, sources={"t.k": 4242})
        assert await events.publish(events.source_group(4242), event)

    asyncio.run(main())
    """
)


def publish_from_another_process(redis_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PUBLISHER],
        env={**__import__("os").environ, "REDIS_URL": redis_url, "DATABASE_URL": ""},
        capture_output=True,
        text=True,
        cwd=settings.BASE_DIR,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


async def test_a_batch_crosses_processes_even_after_a_quiet_spell(redis_url: str) -> None:
    from monitor.settings import CHANNEL_LAYERS  # noqa: F401  (the production config is what we test)

    hosts = [{"address": redis_url, "socket_timeout": None, "socket_keepalive": True, "health_check_interval": 15}]
    layer = RedisPubSubChannelLayer(hosts=hosts)
    channel = await layer.new_channel("hub.")
    await layer.group_add("source.4242", channel)
    try:
        await asyncio.to_thread(publish_from_another_process, redis_url)
        first = await asyncio.wait_for(layer.receive(channel), 10)
        assert first["type"] == "sample.batch" and first["series"] == {"t.k": [[1, 2], [1.5, 2.5]]}
        assert first["seq"] == 1 and first["publisher"]

        # redis-py 8's default 5 s socket timeout kills quiet readers unless configured away:
        # staying quiet for longer is the thing under test, so this sleep is not a wait for anything.
        await asyncio.sleep(11)
        await asyncio.to_thread(publish_from_another_process, redis_url)
        second = await asyncio.wait_for(layer.receive(channel), 10)
        assert second["series"] == first["series"]
    finally:
        await layer.flush()


def test_the_settings_use_the_redis_layer_with_no_socket_timeout(redis_url: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django,os; django.setup(); from django.conf import settings; c=settings.CHANNEL_LAYERS['default']; print(c['BACKEND'], c['CONFIG']['hosts'][0]['socket_timeout'])",
        ],
        env={**__import__("os").environ, "REDIS_URL": redis_url, "DJANGO_SETTINGS_MODULE": "monitor.settings"},
        capture_output=True,
        text=True,
        cwd=settings.BASE_DIR,
    )
    assert result.stdout.split() == ["channels_redis.pubsub.RedisPubSubChannelLayer", "None"], result.stderr
