"""MoesifMiddleware: a pure ASGI middleware that records every HTTP call durably.

The app's messages pass through unchanged (apart from the added
X-Moesif-Transaction-Id response header); the request body is copied as the app
reads it and the response as the app sends it. When the last response chunk has
gone to the client and the app's task is done (its background tasks included),
the call becomes an event that is sampled, masked and handed to this process's
queue writer: recording never delays the app's own work. With
DURABILITY="strict" the last chunk is held until the event is committed (at
most CALLBACK_TIMEOUT for the callbacks, then the commit).
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future
from typing import Any, Dict, Mapping, Optional, Tuple

from .asgi_types import ASGIApp, Message, Receive, Scope, Send
from .callbacks import request_for, response_for
from .capture import Exchange
from .diagnostics import problems
from .event_builder import build_event
from .governance.asgi import adding_headers, check, respond_blocked
from . import outgoing, profiles, shutdown
from .identity import user_id_from_authorization
from .pipeline import EventPipeline
from .writers import close_all, flush_all
from .recording import CallbackSet, Identity, RecordingSequence
from .settings import Settings, parse_settings
from .sync_bridge import is_async_callable, run_without_loop, running_loop, spawn, wait_background
from .delivery.launcher import ensure_started as ensure_flusher_started, stop_flusher

logger = logging.getLogger(__name__)

# How long lifespan shutdown waits for recordings still running in tasks of
# their own (those of calls the server cancelled) before committing.
SHUTDOWN_RECORDING_WAIT = 5.0


async def _no_app(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError(
        "moesifasgi: this MoesifMiddleware was built without an app (fine for update_user & co.); "
        "to record calls, wrap the app: MoesifMiddleware(app, settings={...}) or app.add_middleware(...)")


class MoesifMiddleware:
    """Record every request/response of the wrapped ASGI app into the Moesif queue.

    Usage: ``app.add_middleware(MoesifMiddleware, settings={"APPLICATION_ID": "..."})``.
    """

    def __init__(self, app: Optional[ASGIApp] = None, settings: Optional[Dict[str, Any]] = None) -> None:
        if isinstance(app, Mapping) and not isinstance(settings, Mapping):
            # The original's signature was (settings, app): MoesifMiddleware(settings)
            # for profile updates, or MoesifMiddleware(settings, app).
            app, settings = settings, app
        self.app = app if app is not None else _no_app
        self.settings: Settings = parse_settings(settings)
        if self.settings.debug:
            # The package's logger: every module logs through a child of it.
            logging.getLogger("moesifasgi").setLevel(logging.DEBUG)
        self.pipeline = EventPipeline(self.settings)
        s = self.settings
        callbacks = CallbackSet("", s.skip, s.identify_user, s.identify_company, s.get_session_token, s.get_metadata)
        self.sequence = RecordingSequence(self.pipeline, callbacks, s.callback_timeout)
        # Whether recording can ever wait for something (an async callback).
        self._may_wait = callbacks.any_async() or is_async_callable(s.mask_event_model)
        self._strict = s.durability == "strict"
        # Read on every call: resolved once here.
        self._log_body = s.log_body
        self._body_limit = s.max_body_bytes
        self._use_transaction_id = not s.disabled_transaction_id
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
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.app(scope, receive, self._lifespan_send(send))
            else:
                await self.app(scope, receive, send)
            return
        # Counted until the call is recorded (or handed to a task of its own when
        # cancelled), so that lifespan shutdown can wait for it and a signalled
        # process knows whether a call will still commit its group (shutdown.py).
        shutdown.watch_signals()
        shutdown.call_started()
        try:
            # Apps without lifespan start the flusher on their first request;
            # after that this is one dict lookup.
            ensure_flusher_started(self.settings)
            # The call is run right here rather than in a coroutine of its own:
            # one frame less per call on the app's event loop.
            exchange: Optional[Exchange]
            try:
                exchange = Exchange(scope, receive, self._log_body, self._body_limit, self._use_transaction_id)
                app_receive = receive
                if self._log_body:
                    app_receive = exchange.receive
                    if exchange.reads_ahead():
                        # As the original did, but only within the cap: the body is
                        # recorded even when the app never reads it (a 404, an auth
                        # rejection), and the app gets the same messages, replayed.
                        app_receive = await exchange.read_ahead()
            except Exception:
                self._report_internal_error()
                exchange = None
            if exchange is None:
                await self.app(scope, receive, send)
            else:
                strict = self._strict

                async def send_wrapper(message: Message) -> None:
                    kind = message["type"]
                    if kind == "http.response.start":
                        message = exchange.on_response_start(message)
                    elif kind == "http.response.body" and exchange.on_response_body(message) and (
                            strict or shutdown.requested()):
                        # The client gets the last chunk only once the event is committed.
                        # So too once the process is stopping: some servers (granian) stop
                        # their event loop as soon as the last responses are out, before
                        # the app's task gets to return and be recorded.
                        await self._finish(exchange, strict=True)
                    await send(message)

                app_send: Optional[Send] = send_wrapper
                rules = self.pipeline.remote.governance
                if rules is not None:
                    app_receive, app_send = await self._govern(rules, exchange, app_receive, send_wrapper)
                if app_send is not None:
                    try:
                        await self.app(scope, app_receive, app_send)
                    except asyncio.CancelledError:
                        # The server cancelled the app (a shutdown deadline, daphne on
                        # SIGTERM): record what was sent, without waiting in a task that is
                        # being cancelled, then let the cancellation go on.
                        if not exchange.recorded:
                            if exchange.status is None:
                                exchange.status = 500
                            self._finish_detached(exchange)
                        raise
                    except Exception:
                        # The app's exception goes on untouched; the client will see a 500
                        # (or a cut-off response), and that is what the event records.
                        if not exchange.recorded:
                            if exchange.status is None:
                                exchange.status = 500
                            await self._finish(exchange)
                        raise
                    # In batched mode the event is built here, once the app's task is done:
                    # the last response chunk and the background tasks that follow it never
                    # wait for callbacks or encoding. Also reached when the app returned
                    # without sending the last chunk (client gone).
                    if not exchange.recorded and exchange.response_started:
                        try:
                            await self._finish(exchange)
                        except asyncio.CancelledError:
                            # Cancelled while awaiting a callback: nothing was queued yet (the
                            # hand-over to the writer has no await after it), so start over
                            # where the cancellation cannot reach.
                            self._finish_detached(exchange)
                            raise
        except Exception:
            if shutdown.requested():
                await self._settle_if_stopping()
            raise
        else:
            if shutdown.requested():  # tested here: no coroutine per call while serving
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

    async def _govern(self, rules: Any, exchange: Exchange, app_receive: Receive,
                      send_wrapper: Send) -> Tuple[Receive, Optional[Send]]:
        """Apply Moesif's governance rules: the `receive` and `send` for the app, or
        no `send` when the call was blocked (answered and recorded here)."""
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
            if not exchange.recorded:
                await self._finish(exchange)
            return app_receive, None
        if decision is not None:
            return app_receive, adding_headers(send_wrapper, decision)
        return app_receive, send_wrapper

    def _lifespan_send(self, send: Send) -> Send:
        async def lifespan_send(message: Message) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete":
                ensure_flusher_started(self.settings)
            elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                # Finish the recordings still running (of cancelled calls), commit
                # what this worker still holds, then hand the lease back so
                # another worker (or the next start) drains without waiting for
                # it to expire.
                await self.wait_for_recordings(SHUTDOWN_RECORDING_WAIT)
                await asyncio.get_running_loop().run_in_executor(None, close_all)
                await stop_flusher()
            await send(message)

        return lifespan_send

    async def wait_for_recordings(self, timeout: float) -> bool:
        """Wait, at most `timeout` seconds, until every call this middleware has seen
        is recorded: calls still running (a server that cancelled them unwinds
        them now) and recordings running in tasks of their own. True if all were."""
        deadline = time.monotonic() + timeout
        while shutdown.calls_in_flight() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return await wait_background(max(0.0, deadline - time.monotonic())) and not shutdown.calls_in_flight()

    async def _finish(self, exchange: Exchange, strict: Optional[bool] = None) -> None:
        """Record the exchange once (the sequence never raises)."""
        exchange.recorded = True
        s = self.settings

        def arguments() -> Tuple[Any, Any]:
            return request_for(exchange), response_for(exchange)

        def build(identity: Identity) -> Dict[str, Any]:
            return build_event(exchange, identity, s.api_version)

        def fallback_user_id() -> Optional[str]:
            return user_id_from_authorization(
                exchange.request_headers, s.authorization_header_names, s.authorization_user_id_field)

        try:
            uri, ip_address = exchange.uri, exchange.ip_address
        except Exception:  # a scope no server should send: still never the app's problem
            self._report_internal_error()
            return
        await self.sequence.record(
            arguments, build,
            verb=exchange.scope.get("method", "GET"), uri=uri, ip_address=ip_address,
            status=exchange.status, strict=self._strict if strict is None else strict,
            fallback_user_id=fallback_user_id,
        )

    def _finish_detached(self, exchange: Exchange) -> None:
        """Record from a task being cancelled: right here when nothing can wait,
        else in a task of its own that lifespan shutdown waits for."""
        try:
            if not self._may_wait:
                run_without_loop(self._finish(exchange, strict=False))
                return
            loop = running_loop()
            if loop is not None:
                spawn(loop, self._finish(exchange, strict=False))
        except Exception:
            self._report_internal_error()

    def _report_internal_error(self) -> None:
        self.pipeline.internal_error("internal", "moesifasgi: unexpected error while recording a call; event dropped")
