"""Hub's degraded and stale notices: the layer or database failing, sources gone silent."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from dashboard import events, stats
from dashboard.live.frames import degraded_frame, stale_frame
from dashboard.timeutil import US, now_us

if TYPE_CHECKING:
    from dashboard.live.ledger import KeyLedger
    from dashboard.live.session import Session

log = logging.getLogger(__name__)

STALE_INTERVALS = 3  # a metric whose source is silent this many expected intervals is stale (as Source.is_stale)


class Notices:
    """Hub's part that tells connections when live delivery is degraded or a source is stale."""

    # --- Degraded and stale notices ----------------------------------------------------------
    def _set_degraded(self, reason: str) -> None:
        if reason in self.degraded:
            return
        since = self.degraded[reason] = now_us()
        stats.DEGRADED.labels(reason).inc()
        log.warning("live delivery degraded (%s); telling %d connections", reason, len(self.sessions))
        frame = degraded_frame(reason, "degraded", since)
        for session in list(self.sessions):
            session.send_now(frame)

    def _clear_degraded(self, reason: str) -> None:
        since = self.degraded.pop(reason, None)
        if since is None:
            return
        log.warning("live delivery recovered (%s) after %.1f s", reason, (now_us() - since) / US)
        frame = degraded_frame(reason, "ok", since)
        for session in list(self.sessions):
            session.send_now(frame)
        self.reconcile_soon()  # back-fill now, not at the source's next publication

    def _note_data(self, ledger: KeyLedger) -> None:
        ledger.last_data_us = now_us()
        if ledger.stale_since is not None:
            ledger.stale_since = None
            if self._recovered is None:
                self._recovered = []
                asyncio.get_running_loop().call_soon(self._announce_recovered)
            self._recovered.append(ledger)

    def _announce_recovered(self) -> None:
        recovered, self._recovered = self._recovered or [], None
        self._announce(recovered, "ok", now_us())

    def check_stale(self, now: int | None = None) -> None:
        """Tell connections about metrics whose source missed STALE_INTERVALS expected intervals."""
        now = now_us() if now is None else now
        newly = []
        for ledger in self.ledgers.values():
            limit = int(STALE_INTERVALS * ledger.interval_s * US)
            if ledger.stale_since is None and ledger.seeded and now - ledger.last_data_us > limit:
                ledger.stale_since = ledger.last_data_us + limit
                newly.append(ledger)
        if newly:
            self._announce(newly, "stale", min(ledger.stale_since or now for ledger in newly))

    def _announce(self, ledgers: list[KeyLedger], state: str, since: int) -> None:
        by_source: dict[int, list[str]] = {}
        for ledger in ledgers:
            by_source.setdefault(ledger.source_id, []).append(ledger.key)
        per_session: dict[Session, list[str]] = {}
        for source_id, keys in by_source.items():
            for session in self.groups.get(events.source_group(source_id), ()):
                per_session.setdefault(session, []).extend(k for k in keys if k in session.cursors)
        for session, keys in per_session.items():
            if keys:
                session.send_now(stale_frame(keys, state, since))

    async def _probe_loop(self) -> None:
        """Send this hub a message through the layer every probe_s; one not back in time means the layer is degraded."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.probe_s)
            self._probe_sent += 1
            number = self._probe_sent
            try:
                await asyncio.wait_for(self.layer.send(self.channel, {"type": "hub.probe", "n": number}), self.probe_s)
                deadline = loop.time() + self.probe_s
                while self._probe_seen < number and loop.time() < deadline:
                    self._probe_arrived.clear()
                    try:
                        await asyncio.wait_for(self._probe_arrived.wait(), deadline - loop.time())
                    except TimeoutError:
                        break
            except asyncio.CancelledError:
                raise
            except Exception:
                pass  # a send that fails or hangs is what the probe is for
            if self._probe_seen >= number:
                self._clear_degraded("layer")
            else:
                self._set_degraded("layer")
