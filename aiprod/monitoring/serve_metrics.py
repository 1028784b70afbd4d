"""Serve metrics: an ASGI middleware on the ingress that counts and times every answer from its
status and response headers, and the hooks the generators and the emergency path call.

`X-Provenance: unsigned` answers count as unsigned alerts. Labels stay bounded: endpoints are the
API's routes (anything else is `other`), the path comes from X-Generation-Mode, and free-text
fallback reasons ("emergency_generator_failed: ValueError; card not rendered within 0.4s ...") are
reduced to FALLBACK_REASONS.
"""

from __future__ import annotations

import re
import time
from typing import Any

from aiprod.monitoring.catalog import record

ENDPOINTS = {"/v1/videos": "videos", "/v1/emergency": "emergency", "/v1/models": "models",
             "/v1/health": "health", "/v1/ready": "ready"}
PATHS = {"standard": "standard", "emergency": "emergency_model", "template": "template"}
# the reason's first word (before ':' or ';') -> its label; ingress and generator names for the same cause share one
FALLBACK_REASONS = {
    "deadline_too_short": "deadline_too_short",
    "overloaded": "overloaded",
    "emergency_generator_timeout": "timeout",
    "would_miss_deadline": "timeout",
    "emergency_generator_failed": "generator_failed",
    "ingress_failed": "ingress_failed",
    "model_failed": "model_failed",
    "model_unhealthy": "model_unhealthy",
    "no_model": "no_model",
}
MOVING_POINTERS = ("production", "latest")
_serving: dict[str, str] = {}  # arm -> version this process last reported as serving


def fallback_label(reason: str) -> str:
    """One of FALLBACK_REASONS' labels, or `other`, for a free-text fallback reason."""
    head = re.split(r"[:;]", reason or "", maxsplit=1)[0].strip()
    return FALLBACK_REASONS.get(head, "other")


def endpoint_label(path: str) -> str:
    return ENDPOINTS.get(path.rstrip("/") or "/", "other")


def record_answer(endpoint: str, status: int, headers: dict[str, str], seconds: float) -> None:
    """Everything one HTTP answer tells: request count, latency, 503/504, template reason, version."""
    path = PATHS.get(headers.get("x-generation-mode", ""), "none")
    record("aiprod_serve_requests", 1, endpoint=endpoint, status=str(status), path=path)
    record("aiprod_serve_request_seconds", seconds, endpoint=endpoint, path=path)
    if status == 503:
        record("aiprod_serve_rejected", 1, endpoint=endpoint)
    elif status == 504:
        record("aiprod_serve_deadline_missed", 1, endpoint=endpoint)
    if headers.get("x-provenance") == "unsigned":  # only alerts go out unsigned (a standard video fails instead)
        record("aiprod_emergency_unsigned", 1, reason="signing_failed")
    if path == "template":
        record("aiprod_serve_template_fallbacks", 1, reason=fallback_label(headers.get("x-fallback-reason", "")))
    elif path != "none" and status == 200:
        record("aiprod_serve_model_answers", 1, endpoint=endpoint, version=headers.get("x-model-version", ""),
               arm=headers.get("x-ab-arm", "a"), adapter=headers.get("x-adapter", ""))


class MetricsMiddleware:
    """Pure ASGI (no response buffering): reads the status and headers as they are sent."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        seen: dict[str, Any] = {"status": 500, "headers": {}}

        async def watch(message: dict) -> None:
            if message.get("type") == "http.response.start":
                seen["status"] = message.get("status", 500)
                seen["headers"] = {k.decode("latin-1").lower(): v.decode("latin-1")
                                   for k, v in message.get("headers", [])}
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            record_answer(endpoint_label(scope.get("path", "")), seen["status"], seen["headers"],
                          time.perf_counter() - started)


def install(api: Any) -> None:
    """Count and time every answer of the FastAPI app `api` (call before it serves)."""
    api.add_middleware(MetricsMiddleware)


# ------------------------------------------------------------------- generator hooks


def model_load_failed(spec: str | None) -> None:
    """A model load failed in a generator replica (aiprod.serving.model_host)."""
    record("aiprod_model_load_failures", 1, pointer=spec if spec in (*MOVING_POINTERS, "adapter") else "other")


def model_serving(a: Any, b: Any, fraction: float) -> None:
    """The versions arms a and b serve now (aiprod.serving.model_host.Served or None); a replaced
    version's series goes to 0."""
    for arm, served in (("a", a), ("b", b)):
        version = served.version if served is not None else ""
        old = _serving.get(arm)
        if old is not None and old != version:
            record("aiprod_model_serving", 0, arm=arm, version=old)
        if version:
            record("aiprod_model_serving", 1, arm=arm, version=version)
            _serving[arm] = version
        else:
            _serving.pop(arm, None)
    record("aiprod_model_ab_fraction", fraction if b is not None else 0.0)


def emergency_unsigned(reason: str = "signing_failed") -> None:
    """An emergency alert went out without content credentials (keep `reason` to a few fixed words).
    Answers of the HTTP API are counted by the middleware from `X-Provenance: unsigned`; call this
    only for alerts that leave another way."""
    record("aiprod_emergency_unsigned", 1, reason=reason)
