"""What one server knows between requests: the blend, its keys and limits, the requests in
flight and their streams (for draining at shutdown), and its metrics."""

from __future__ import annotations

import secrets

from starlette.requests import HTTPConnection

from blendrt.blend import Blend
from blendrt.blend_stream import BlendStream
from blendrt.server.errors import APIError
from blendrt.server.metrics import ServerMetrics

RETRY_AFTER_SECONDS = 1  # what a 429 or 503 tells the client to wait


class ServerState:
    def __init__(
        self,
        blend: Blend,
        *,
        api_key: str | None,
        metrics_key: str | None,
        max_in_flight: int,
        served_model_name: str,
    ) -> None:
        if not served_model_name or served_model_name in blend.members:
            raise ValueError(
                f"served_model_name {served_model_name!r} must be non-empty and differ from "
                f"the member names ({', '.join(blend.members)})"
            )
        self.blend = blend
        self.api_key = api_key
        self.metrics_key = metrics_key or api_key  # /metrics is behind a key if any is set
        self.max_in_flight = max_in_flight
        self.served_model_name = served_model_name  # the blend's model id
        self.in_flight = 0
        self.streams: set[BlendStream] = set()  # every live request's streams
        self.draining = False  # shutting down: new requests get 503
        self.shutdown_message: str | None = None  # set when live streams are cut short
        self.metrics = ServerMetrics(blend)

    # ---- the front door ------------------------------------------------------------------

    def authorize(self, request: HTTPConnection, key: str | None) -> None:
        """401 unless the request carries `key` as a bearer token (no key: open)."""
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # NOTE: compared as bytes: a non-ASCII token is a wrong key, not a TypeError.
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.encode("utf-8", "surrogateescape"), key.encode("utf-8")
        ):
            raise APIError(
                401,
                "missing or wrong API key (Authorization: Bearer ...)",
                kind="authentication_error",
                code="invalid_api_key",
            )

    def member_of(self, model: str) -> str | None:
        """The member a request's `model` pins (None: the blend's id, the policy picks)."""
        if model == self.served_model_name:
            return None
        if model not in self.blend.members:
            known = ", ".join([self.served_model_name, *self.blend.members])
            raise APIError(
                404,
                f"model {model!r} not found; available: {known}",
                param="model",
                code="model_not_found",
            )
        return model

    def admit(self) -> None:
        """Counts a request in; 503 while draining, 429 beyond max_in_flight."""
        if self.draining:
            raise unavailable()
        if self.in_flight >= self.max_in_flight:
            raise APIError(
                429,
                f"server busy: {self.max_in_flight} requests in flight",
                kind="rate_limit_error",
                headers={"retry-after": str(RETRY_AFTER_SECONDS)},
            )
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1

    # ---- shutdown ------------------------------------------------------------------------

    def cut_streams(self, message: str) -> None:
        """Ends every live request now (their pages are freed); each says why."""
        self.shutdown_message = message
        for stream in list(self.streams):
            stream.cancel()


def unavailable() -> APIError:
    return APIError(
        503,
        "the server is shutting down",
        kind="server_error",
        code="server_shutting_down",
        headers={"retry-after": str(RETRY_AFTER_SECONDS)},
    )
