"""The no-data job: every NODATA_CHECK_S, alerts on silent metrics, rules disabled behind our back, lost notices.

It is safe in several processes at once (every change is conditional, every
stale delivery is claimed by one process). It also retires what a rule
disabled without a signal (`QuerySet.update(enabled=False)`, raw SQL) left
active, and resumes notifications left pending by a process that stopped.
"""

from __future__ import annotations

import asyncio
import logging

from dashboard import actions
from dashboard.alerts import transports
from dashboard.logthrottle import FailureLog

log = logging.getLogger(__name__)

NODATA_CHECK_S = 5.0  # how often silent metrics are looked for; a no-data alert is this late at most


async def nodata_loop() -> None:
    """Background job: look for silent metrics every NODATA_CHECK_S; retire disabled rules; resume lost notices."""
    failures = FailureLog(log, f"no-data check (every {NODATA_CHECK_S:.0f} s)")  # one traceback per outage
    while True:
        await asyncio.sleep(NODATA_CHECK_S)
        try:
            await actions.retire_disabled_rules()
            await actions.check_nodata()
            await transports.retry_stale_deliveries()
        except Exception as exc:
            failures.failure(exc)
        else:
            failures.success()
