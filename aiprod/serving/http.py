"""The ingress's door: API key, body size cap, strict JSON, and a validation error response that
cannot fail. Ordered so that a caller without the key learns nothing about the body (401 first),
a huge body is never parsed (413), and values JSON allows but the API cannot (NaN, ±Infinity,
lone UTF-16 surrogates) are 422 naming the field, never a 500 from echoing them back.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from aiprod.serving.schemas import excerpt, unencodable

log = logging.getLogger(__name__)
MSG_CHARS = 300
MAX_ERRORS = 20


def require_api_key(request: Request) -> None:
    """Bearer key check (a FastAPI dependency); GuardedRoute runs it before reading the body."""
    key = getattr(request.app.state, "api_key", None)
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), key.encode()):
        raise HTTPException(401, "missing or wrong API key (Authorization: Bearer <key>)",
                            headers={"WWW-Authenticate": "Bearer"})


def _loc_part(part: Any) -> str | int:
    return part if isinstance(part, int) else excerpt(str(part))


def safe_errors(errors: Any) -> list[dict[str, Any]]:
    """FastAPI/pydantic errors reduced to loc, msg, type and a bounded, encodable excerpt of the input."""
    out = []
    for error in list(errors)[:MAX_ERRORS]:
        item = {
            "loc": [_loc_part(p) for p in error.get("loc", ())],
            "msg": excerpt(str(error.get("msg", "invalid value")), MSG_CHARS),
            "type": excerpt(str(error.get("type", "value_error"))),
        }
        if "input" in error:
            item["input"] = excerpt(error["input"])
        out.append(item)
    return out


def validation_error_response(errors: Any) -> JSONResponse:
    try:
        return JSONResponse({"detail": safe_errors(errors)}, status_code=422)
    except Exception:  # noqa: BLE001 - the error answer itself must never be a 500
        log.exception("could not describe a validation error")
        return JSONResponse({"detail": [{"loc": ["body"], "msg": "invalid request body", "type": "value_error"}]},
                            status_code=422)


async def _validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    return validation_error_response(exc.errors())


def json_problems(value: Any, loc: tuple = ("body",)) -> list[dict[str, Any]]:
    """Non-finite numbers and unencodable strings anywhere in parsed JSON, each naming its field."""
    problems: list[dict[str, Any]] = []
    if isinstance(value, float) and not math.isfinite(value):
        problems.append({"loc": list(loc), "msg": f"must be a finite number, got {value}", "type": "finite_number",
                         "input": value})
    elif isinstance(value, str) and unencodable(value):
        problems.append({"loc": list(loc), "msg": "text contains a lone UTF-16 surrogate (not valid Unicode)",
                         "type": "string_unicode", "input": value})
    elif isinstance(value, dict):
        for key, item in value.items():
            if unencodable(key):
                problems.append({"loc": [*loc, key], "msg": "field name contains a lone UTF-16 surrogate",
                                 "type": "string_unicode"})
            else:
                problems += json_problems(item, (*loc, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            problems += json_problems(item, (*loc, i))
    return problems


class _TooLarge(Exception):
    pass


async def _read_capped(request: Request, cap: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _is_json(request: Request) -> bool:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return not kind or kind == "application/json" or kind.endswith("+json")


class GuardedRoute(APIRoute):
    """An APIRoute that checks the key (when the route depends on require_api_key), caps the body at
    `app.state.max_body_bytes` and parses JSON strictly before FastAPI validates the body."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()
        needs_key = any(d.dependency is require_api_key for d in self.dependencies)
        has_body = self.body_field is not None

        async def guarded(request: Request) -> Response:
            if needs_key:
                try:
                    require_api_key(request)
                except HTTPException as exc:
                    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
            if has_body:
                cap = getattr(request.app.state, "max_body_bytes", None) or 1 << 20
                try:
                    body = await _read_capped(request, cap)
                except _TooLarge:
                    return JSONResponse({"detail": f"request body is larger than {cap} bytes (serve.max_body_bytes)"},
                                        status_code=413)
                request._body = body  # FastAPI reads the body from here instead of the consumed stream
                if body and _is_json(request):
                    try:
                        data = json.loads(body)
                    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, huge ints
                        return validation_error_response([{"loc": ["body"], "type": "json_invalid",
                                                           "msg": f"invalid JSON: {excerpt(str(exc), 120)}"}])
                    problems = json_problems(data)
                    if problems:
                        return validation_error_response(problems)
                    request._json = data
            return await handler(request)

        return guarded


def install(api: FastAPI) -> None:
    """Routes defined on `api` after this go through GuardedRoute; validation errors answer safely."""
    api.router.route_class = GuardedRoute
    api.add_exception_handler(RequestValidationError, _validation_handler)
