"""Fetching Moesif's sampling config and governance rules into the queue file.

Only the leader fetches; every worker's writer thread reads the stored copies
(`moesifasgi.shared_state`), so N workers cost Moesif one poll, not N.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Optional

from ..storage import queue_store as qs
from .async_db import AsyncDB
from .client import MoesifClient

logger = logging.getLogger(__name__)

CONFIG_INTERVAL = 60.0
# A new ETag on every post while the config endpoint fails must not turn into a
# fetch per post.
MIN_FETCH_GAP = 2.0


class RemoteConfig:
    def __init__(self, db: AsyncDB, client: MoesifClient, *, interval: float = CONFIG_INTERVAL,
                 min_gap: float = MIN_FETCH_GAP) -> None:
        self.db = db
        self.client = client
        self.interval = interval
        self.min_gap = min(min_gap, interval)
        self.etag: Optional[str] = None
        self.fetches = 0
        self._due: Optional[asyncio.Event] = None

    def note_etag(self, etag: str) -> None:
        """Called with the ETag of every event post: a new one means the config changed."""
        if etag != self.etag and self._due is not None:
            self._due.set()

    async def refresh(self) -> bool:
        """Fetch /v1/config and /v1/rules once and store what came back."""
        self.fetches += 1
        config = await self.client.get_config()
        items = {}
        if config.ok:
            items[qs.KV_CONFIG] = json.dumps(config.data, separators=(",", ":"), sort_keys=True)
            if config.etag:
                items[qs.KV_CONFIG_ETAG] = config.etag
                self.etag = config.etag
        else:
            logger.warning("cannot fetch the Moesif config: %s", config.error)
        rules = await self.client.get_rules()
        if rules.ok:
            items[qs.KV_RULES] = json.dumps(rules.data, separators=(",", ":"), sort_keys=True)
        else:
            logger.warning("cannot fetch the Moesif governance rules: %s", rules.error)
        if items:
            await self.db.run(qs.kv_set_many, items)
        return config.ok and rules.ok

    async def run(self) -> None:
        """Fetch now, then every `interval` seconds or as soon as a new ETag is seen."""
        self._due = asyncio.Event()
        if self.etag is None:
            stored = await self.db.run(qs.kv_get, qs.KV_CONFIG_ETAG)
            self.etag = stored
        while True:
            self._due.clear()
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("fetching the Moesif config failed")
            await asyncio.sleep(self.min_gap)
            try:
                await asyncio.wait_for(self._due.wait(), self.interval - self.min_gap)
            except asyncio.TimeoutError:
                pass
