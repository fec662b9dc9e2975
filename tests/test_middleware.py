"""The middleware chain stays async end to end.

One sync-only middleware makes Django run the whole chain on asgiref's single
sync thread and hold it while an async view runs; an ingest view then waits
for the writer, whose alert evaluation needs that same thread, and the
request never finishes. These tests keep every middleware async-capable and
show the deadlock's old trigger (an ingest before the rule cache is filled)
answering.
"""

from __future__ import annotations

import asyncio

import pytest
from django.conf import settings
from django.test import AsyncClient
from django.utils.module_loading import import_string

from dashboard import ratelimit
from dashboard.alerts import cache
from dashboard.models import AgentToken, Sample
from dashboard.timeutil import now_us


@pytest.mark.parametrize("path", settings.MIDDLEWARE)
def test_every_middleware_is_async_capable(path: str) -> None:
    middleware = import_string(path)
    assert getattr(middleware, "async_capable", False), f"{path} is sync-only: it would hold the sync thread"


@pytest.fixture
def token_secret(db) -> str:
    ratelimit.reset()
    return AgentToken.issue("middleware test")[1]


@pytest.mark.django_db(transaction=True)
async def test_an_ingest_before_the_rule_cache_is_filled_answers(token_secret: str) -> None:
    cache.clear_cache()
    response = await asyncio.wait_for(
        AsyncClient().post(
            "/api/v2/write?precision=ns",
            f"mw,host=m1 value=1 {now_us() * 1000}\n",
            content_type="text/plain",
            headers={"Authorization": f"Token {token_secret}"},
        ),
        timeout=30,  # the old chain never answered
    )
    assert response.status_code == 204, response.content
    assert await Sample.objects.filter(metric__key__startswith="m1").acount() == 1
