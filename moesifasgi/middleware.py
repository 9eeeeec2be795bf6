"""MoesifMiddleware: a pure ASGI middleware that records every HTTP call durably.

The app's messages pass through unchanged (apart from the added
X-Moesif-Transaction-Id response header); the request body is copied as the app
reads it and the response as the app sends it. When the last response chunk has
gone to the client, the call becomes an event that is sampled, masked and handed
to this process's queue writer. With DURABILITY="strict" the last chunk is held
until the event is committed.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future
from typing import Any, Dict, Optional

from .asgi_types import ASGIApp, Message, Receive, Scope, Send
from .callbacks import CallbackError, invoke, request_for, response_for
from .capture import Exchange
from .diagnostics import problems
from .event_builder import build_event, route_of
from .governed import adding_headers, check, respond_blocked
from . import outgoing, profiles, shutdown
from .identity import user_id_from_authorization
from .masking import MaskingError
from .pipeline import EventPipeline
from .queue_writer import close_all, flush_all
from .settings import Settings, parse_settings
from moesifasgi_flush.embedded import ensure_started as ensure_flusher_started, stop_embedded

logger = logging.getLogger("moesifasgi")


class MoesifMiddleware:
    """Record every request/response of the wrapped ASGI app into the Moesif queue.

    Usage: ``app.add_middleware(MoesifMiddleware, settings={"APPLICATION_ID": "..."})``.
    """

    def __init__(self, app: ASGIApp, settings: Optional[Dict[str, Any]] = None) -> None:
        self.app = app
        self.settings: Settings = parse_settings(settings)
        if self.settings.debug:
            logger.setLevel(logging.DEBUG)
        self.pipeline = EventPipeline(self.settings)
        s = self.settings
        self._needs_request = any(
            f is not None for f in (s.skip, s.identify_user, s.identify_company, s.get_metadata, s.get_session_token)
        )
        self._strict = s.durability == "strict"
        profiles.use_queue_path(s.queue_path)
        if s.capture_outgoing_requests:
            try:
                outgoing.install(s)
            except Exception:
                problems.report("outgoing", "moesifasgi: cannot capture outgoing calls", exc_info=True)

    # -- user and company profiles, as on the original middleware -----------------------

    def update_user(self, user_profile: Any) -> "Future[int]":
        """Queue a user profile for Moesif (a dict or moesifapi UserModel with `user_id`)."""
        return profiles.update_user(user_profile, queue_path=self.settings.queue_path)

    def update_users_batch(self, user_profiles: Any) -> "Future[int]":
        return profiles.update_users_batch(user_profiles, queue_path=self.settings.queue_path)

    def update_company(self, company_profile: Any) -> "Future[int]":
        """Queue a company profile (a dict or moesifapi CompanyModel with `company_id`)."""
        return profiles.update_company(company_profile, queue_path=self.settings.queue_path)

    def update_companies_batch(self, companies_profiles: Any) -> "Future[int]":
        return profiles.update_companies_batch(companies_profiles, queue_path=self.settings.queue_path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._lifespan_send(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Counted so that a stopping process knows whether a call will still
        # commit its group (see shutdown.py).
        shutdown.watch_signals()
        shutdown.call_started()
        try:
            await self._call_http(scope, receive, send)
        except Exception:
            await self._settle_if_stopping()
            raise
        else:
            await self._settle_if_stopping()
        finally:
            shutdown.call_ended()

    async def _settle_if_stopping(self) -> None:
        # Once the process is stopping, a call returns to the server only when
        # what it queued is committed: servers wait for their calls before they
        # exit. Here, outside the app, because Django cancels its own request
        # task as soon as the response is sent.
        if shutdown.requested():
            await asyncio.get_running_loop().run_in_executor(None, flush_all, shutdown.CALL_COMMIT_TIMEOUT)

    async def _call_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Apps without lifespan start the flusher on their first request; after
        # that this is one dict lookup.
        ensure_flusher_started(self.settings)
        try:
            exchange = Exchange(
                scope,
                receive,
                log_body=self.settings.log_body,
                body_limit=self.settings.max_body_bytes,
                use_transaction_id=not self.settings.disabled_transaction_id,
            )
        except Exception:
            self._report_internal_error()
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                message = exchange.on_response_start(message)
            elif kind == "http.response.body" and exchange.on_response_body(message):
                if self._strict:
                    await self._finish(exchange)
                    await send(message)
                else:
                    await send(message)
                    await self._finish(exchange)
                return
            await send(message)

        app_receive = exchange.receive if exchange.log_body else receive
        app_send: Send = send_wrapper
        rules = self.pipeline.writer.shared.governance
        if rules is not None:
            decision = None
            try:
                decision, app_receive = await check(rules, exchange, app_receive, self.settings)
            except Exception:
                problems.report("governance", "moesifasgi: cannot apply the governance rules; the call proceeds",
                                exc_info=True)
            if decision is not None and decision.blocked_by is not None:
                # Answered through send_wrapper: recorded, with the transaction id.
                exchange.blocked_by = decision.blocked_by
                await respond_blocked(send_wrapper, decision)
                return
            if decision is not None:
                app_send = adding_headers(send_wrapper, decision)
        try:
            await self.app(scope, app_receive, app_send)
        except Exception:
            # The app's exception goes on untouched; the client will see a 500
            # (or a cut-off response), and that is what the event records.
            if not exchange.recorded:
                if exchange.status is None:
                    exchange.status = 500
                await self._finish(exchange)
            raise
        if not exchange.recorded and exchange.response_started:
            # The app returned without sending the last chunk (client gone).
            await self._finish(exchange)

    def _lifespan_send(self, send: Send) -> Send:
        async def lifespan_send(message: Message) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete":
                ensure_flusher_started(self.settings)
            elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                # Commit what this worker still holds, then hand the lease back so
                # another worker (or the next start) drains without waiting for it
                # to expire.
                await asyncio.get_running_loop().run_in_executor(None, close_all)
                await stop_embedded()
            await send(message)

        return lifespan_send

    async def _finish(self, exchange: Exchange) -> None:
        exchange.recorded = True
        try:
            await self._record(exchange)
        except CallbackError as exc:
            self.pipeline.drop(
                f"callback-{exc.name}", "moesifasgi: %s; the event was dropped", exc
            )
        except MaskingError as exc:
            self.pipeline.drop("masking", "moesifasgi: %s", exc)
        except Exception:
            self._report_internal_error()

    def _report_internal_error(self) -> None:
        self.pipeline.internal_error("internal", "moesifasgi: unexpected error while recording a call; event dropped")

    async def _record(self, exchange: Exchange) -> None:
        s = self.settings
        request = response = None
        if self._needs_request:
            request, response = request_for(exchange), response_for(exchange)
        if s.skip is not None and await invoke("SKIP", s.skip, request, response):
            return

        user_id = None
        if s.identify_user is not None:
            user_id = await invoke("IDENTIFY_USER", s.identify_user, request, response)
        if not user_id:
            user_id = user_id_from_authorization(
                exchange.request_headers, s.authorization_header_names, s.authorization_user_id_field
            )
        company_id = None
        if s.identify_company is not None:
            company_id = await invoke("IDENTIFY_COMPANY", s.identify_company, request, response)
        user_id = None if user_id is None else str(user_id)
        company_id = None if company_id is None else str(company_id)

        rate = 100.0
        writer = self.pipeline.writer
        if writer.shared.sampling is not None:
            rate = self.pipeline.sampling_rate(
                verb=exchange.scope.get("method", "GET"),
                route=route_of(exchange.uri),
                ip_address=exchange.ip_address,
                status=exchange.status,
                user_id=user_id,
                company_id=company_id,
            )
            if not self.pipeline.sampled_in(rate):
                return

        session_token = None
        if s.get_session_token is not None:
            session_token = await invoke("GET_SESSION_TOKEN", s.get_session_token, request, response)
        metadata = None
        if s.get_metadata is not None:
            metadata = await invoke("GET_METADATA", s.get_metadata, request, response)

        event = build_event(
            exchange,
            api_version=s.api_version,
            user_id=user_id,
            company_id=company_id,
            session_token=None if session_token is None else str(session_token),
            metadata=metadata,
            blocked_by=exchange.blocked_by,
            weight=self.pipeline.weight(rate),
        )
        if s.debug:
            logger.debug("moesifasgi: queueing event %s %s -> %s", event["request"]["verb"],
                         event["request"]["uri"], event["response"]["status"])
        await self.pipeline.persist(event, writer, strict=self._strict)
