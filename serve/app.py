"""Ray Serve app: FastAPI ingress + StandardGenerator + EmergencyGenerator.

    serve run serve/config.yaml            # local, tiny settings
    serve deploy serve/config.cluster.yaml # cluster (GPU settings, API key on)
    serve.run(build_app({"preset": "tiny", "model": "out/registry/..."}))   # from Python / tests

POST /v1/videos -> video/mp4; POST /v1/emergency -> video/mp4, always (template card when the model
path is overloaded, failing or too slow); GET /v1/models, /v1/health, /v1/ready; OpenAPI at /docs.
The model version to serve is each generator's `user_config` ({model, ab, fault}), applied live
by reconfigure(); replicas serving `production` or `latest` also follow that registry pointer.
The logic lives in aiprod.serving; this file maps it to Serve and HTTP.
"""

import asyncio
import json
import math
import os
import time
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from aiprod.config import validate
from aiprod.emergency import AlertRequest, load_library
from aiprod.monitoring import serve_metrics
from aiprod.provenance import Facts, Provenance, SigningError, alert_prompt
from aiprod.serving import (
    AppArgs,
    EmergencyJob,
    EmergencyRequest,
    EmergencyResponder,
    FallbackRenderer,
    ModelHost,
    StandardBatchRunner,
    VideoJob,
    VideoRequest,
    deployment_options,
    request_bucket,
    resolve_app_config,
    warm_up,
)
from aiprod.serving.http import install, require_api_key, validation_error_response
from aiprod.serving.schemas import emergency_errors, video_errors

api = FastAPI(
    title="AIPROD video generation",
    description="Text to video for public-information broadcasting; emergency alerts always answer.",
    version="1",
)
install(api)  # every route below: key, then body cap, then strict JSON; 422s that cannot fail
serve_metrics.install(api)  # every answer counted and timed (Prometheus, through Ray's metrics agent)
STATUS_FOR = {"deadline": 504, "no_model": 503, "bad_request": 422, "failed": 500}


def _device(num_gpus: float) -> str:
    import torch

    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"


def _ascii(text: str) -> str:
    return text.encode("ascii", "backslashreplace").decode()


AUTH = [Depends(require_api_key)]


def _bucket(body: Any, request: Request) -> float:
    key = request.headers.get("x-request-id") or json.dumps(body.model_dump(), sort_keys=True)
    return request_bucket(key)


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    def __init__(self, config: dict, standard: DeploymentHandle, emergency: DeploymentHandle):
        self.cfg = validate(config)
        self.standard = standard
        self.emergency = emergency
        library = load_library(self.cfg.serve.template.templates_dir)
        self.types = {name: len(library.get(name).variations) for name in library.types()}
        self.cards = FallbackRenderer(self.cfg, list(self.types))  # ready before the first emergency
        # Every answer is signed here; missing credentials stop the deploy rather than any answer.
        self.provenance = Provenance(self.cfg.provenance)
        api.state.max_body_bytes = self.cfg.serve.max_body_bytes
        api.state.api_key = None
        env = self.cfg.serve.api_key_env
        if env:
            api.state.api_key = os.environ.get(env)
            if not api.state.api_key:
                raise RuntimeError(
                    f"serve.api_key_env is {env!r} but that environment variable is empty on the ingress "
                    f"replica; set it (e.g. runtime_env env_vars) or set serve.api_key_env=null"
                )

    def _unavailable(self, message: str, retry_after_s: float | None = None) -> JSONResponse:
        retry = self.cfg.serve.retry_after_s if retry_after_s is None else max(1, math.ceil(retry_after_s))
        return JSONResponse({"detail": message}, status_code=503, headers={"Retry-After": str(retry)})

    # ------------------------------------------------------------------------ standard

    @api.post("/v1/videos", response_class=Response, dependencies=AUTH,
              responses={200: {"content": {"video/mp4": {}}}})
    async def videos(self, body: VideoRequest, request: Request) -> Response:
        errors = video_errors(body, self.cfg)
        if errors:
            raise RequestValidationError(errors)
        s = self.cfg.serve
        deadline_s = body.deadline_s or s.standard_deadline_s
        job = VideoJob(
            prompt=body.prompt, language=body.language, seconds=body.duration_s or s.default_duration_s,
            fps=body.fps or s.default_fps, width=body.width or s.default_width,
            height=body.height or s.default_height, seed=body.seed, steps=body.steps, guidance=body.guidance,
            bucket=_bucket(body, request), deadline=time.time() + deadline_s, deadline_s=deadline_s,
            adapter=body.adapter,
        )
        response = self.standard.generate.remote(job)
        try:
            result = await asyncio.wait_for(response, deadline_s)
        except BackPressureError:
            return self._unavailable("standard generation queue is full; retry later")
        except TimeoutError:
            response.cancel()
            return JSONResponse({"detail": f"deadline of {deadline_s}s passed"}, status_code=504)
        if result.status != "ok":
            if result.status in ("no_model", "busy", "adapter_unavailable"):
                return self._unavailable(result.message, result.retry_after_s)
            if result.status == "too_costly":
                return validation_error_response([{"loc": ["body", "deadline_s"], "msg": result.message,
                                                   "type": "value_error", "input": deadline_s}])
            if result.status == "bad_adapter":
                return validation_error_response([{"loc": ["body", "adapter"], "msg": result.message,
                                                   "type": "value_error", "input": body.adapter}])
            return JSONResponse({"detail": result.message}, status_code=STATUS_FOR[result.status])
        facts = Facts("model", "standard", body.language, body.prompt, model_version=result.version,
                      adapter=result.adapter or None)
        try:
            mp4 = await asyncio.to_thread(self.provenance.sign, result.mp4, facts)
        except SigningError as exc:  # a standard video never leaves unsigned
            return JSONResponse({"detail": str(exc)}, status_code=500)
        return Response(mp4, media_type="video/mp4", headers={
            "X-Provenance": "signed",
            "X-Model-Version": result.version,
            "X-Generation-Mode": "standard",
            "X-Generation-Seconds": f"{result.generation_s:.3f}",
            "X-AB-Arm": result.arm,
            "X-Batch-Size": str(result.batch_size),
            "X-Video-Frames": str(result.frames),
            **({"X-Adapter": result.adapter} if result.adapter else {}),
        })

    # ----------------------------------------------------------------------- emergency

    @api.post("/v1/emergency", response_class=Response, dependencies=AUTH,
              responses={200: {"content": {"video/mp4": {}}}})
    async def emergency_alert(self, body: EmergencyRequest, request: Request) -> Response:
        errors = emergency_errors(body, self.cfg, self.types)
        if errors:
            raise RequestValidationError(errors)
        started = time.time()
        try:
            return await self._alert(body, request, started)
        except Exception as exc:  # noqa: BLE001 - an emergency is never answered with an error
            alert = AlertRequest(body.emergency_type)
            result = self.cards.default(alert, f"ingress_failed: {type(exc).__name__}", started)
            return await self._alert_response(result, alert, body.deadline_s or self.cfg.serve.emergency_deadline_s,
                                              started)

    async def _alert(self, body: EmergencyRequest, request: Request, started: float) -> Response:
        deadline_s = body.deadline_s or self.cfg.serve.emergency_deadline_s
        alert = AlertRequest(body.emergency_type, body.language, body.variation, body.headline,
                             body.instructions, body.region, body.motion)
        # The generator must answer `reserve` before the deadline, leaving time to render here.
        budget = deadline_s - self.cfg.serve.emergency_reserve_s
        reason = "deadline_too_short"
        if budget > 0:
            job = EmergencyJob(alert, _bucket(body, request), started + budget)
            response = self.emergency.handle.remote(job)
            try:
                result = await asyncio.wait_for(response, budget)
                return await self._alert_response(result, alert, deadline_s, started)
            except BackPressureError:
                reason = "overloaded"
            except TimeoutError:
                response.cancel()
                reason = "emergency_generator_timeout"
            except Exception as exc:  # noqa: BLE001 - an emergency is never answered with an error
                reason = f"emergency_generator_failed: {type(exc).__name__}"
        render_by = started + deadline_s - self.cfg.serve.alert_margin_s
        return await self._alert_response(await self.cards.render(alert, reason, render_by), alert, deadline_s,
                                          started)

    async def _alert_response(self, result, alert: AlertRequest, deadline_s: float, started: float) -> Response:
        template = result.mode == "template"
        facts = Facts("template" if template else "model", result.mode, alert.language,
                      alert_prompt(alert.emergency_type, alert.headline, alert.instructions, alert.region),
                      model_version=None if template else result.version, notes=tuple(result.notes))
        # Unsigned beats late or unanswered: a signing failure, or no free signer (or thread) before half
        # the alert margin is left, sends it unsigned, counted (Provenance.unsigned) and logged.
        sign_by = started + deadline_s - self.cfg.serve.alert_margin_s / 2
        try:
            mp4, signed = await asyncio.wait_for(
                asyncio.to_thread(self.provenance.sign_alert, result.mp4, facts, sign_by),
                max(0.0, sign_by - time.time()) + 0.05)
        except TimeoutError:
            self.provenance.count_unsigned("no thread free to sign before the deadline")
            mp4, signed = result.mp4, False
        headers = {
            "X-Provenance": "signed" if signed else "unsigned",
            "X-Model-Version": result.version,
            "X-Generation-Mode": result.mode,
            "X-Generation-Seconds": f"{result.generation_s:.3f}",
            "X-Template": result.template_id,
            "X-Deadline-Seconds": f"{deadline_s:g}",
            "X-Video-Frames": str(result.frames),
        }
        if result.arm:
            headers["X-AB-Arm"] = result.arm
        if result.reason:
            headers["X-Fallback-Reason"] = _ascii(result.reason)
        if result.motion:
            headers["X-Motion"] = result.motion
        if result.notes:
            headers["X-Template-Note"] = _ascii("; ".join(result.notes))
        return Response(mp4, media_type="video/mp4", headers=headers)

    # -------------------------------------------------------------------------- status

    async def _info(self, handle: DeploymentHandle) -> dict[str, Any]:
        wait_s = self.cfg.serve.retry_after_s
        try:
            return await asyncio.wait_for(handle.info.remote(), wait_s)
        except BackPressureError:
            return {"error": "overloaded"}
        except TimeoutError:
            return {"error": f"no answer within {wait_s}s (starting or busy)"}
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            return {"error": f"{type(exc).__name__}: {exc}"}

    @api.get("/v1/models", dependencies=AUTH)
    async def models(self) -> dict:
        standard, emergency = await asyncio.gather(self._info(self.standard), self._info(self.emergency))
        return {
            "standard": standard,
            "emergency": emergency,
            "emergency_types": self.types,
            "languages": self.cfg.serve.languages,
            "preset": self.cfg.preset,
            "provenance": self.provenance.info(),
        }

    @api.get("/v1/health")
    async def health(self) -> dict:
        return {"status": "ok"}

    @api.get("/v1/ready")
    async def ready(self) -> JSONResponse:
        standard, emergency = await asyncio.gather(self._info(self.standard), self._info(self.emergency))
        problems = []
        if "a" not in standard:
            problems.append(f"standard: unreachable: {standard.get('error')}")
        elif standard["a"] is None:
            problems.append(f"standard: no model loaded ({standard.get('error') or 'serve.model is not set'})")
        elif standard.get("error"):
            problems.append(f"standard: model load failed, serving {standard['a']['version']}: {standard['error']}")
        if "a" not in emergency:
            problems.append(f"emergency: unreachable: {emergency.get('error')}")
        elif emergency.get("error"):
            problems.append(f"emergency: model load failed: {emergency['error']}")
        body = {"ready": not problems, "problems": problems,
                "standard_version": (standard.get("a") or {}).get("version")}
        return JSONResponse(body, status_code=200 if not problems else 503)


@serve.deployment(name="StandardGenerator")
class StandardGenerator:
    def __init__(self, config: dict):
        self.cfg = validate(config)
        self.host = ModelHost(self.cfg, _device(self.cfg.serve.standard.num_gpus))
        self.host.follow_registry(self.cfg.serve.follow_registry_s)
        self.runner = StandardBatchRunner(self.cfg, self.host)
        self.batch.set_max_batch_size(self.cfg.serve.batch_max_size)
        self.batch.set_batch_wait_timeout_s(self.cfg.serve.batch_wait_s)

    async def reconfigure(self, user_config: dict) -> None:
        await self.host.reconfigure(user_config)

    async def generate(self, job: VideoJob):
        if job.adapter is not None:  # resolved and loaded (LRU) before batching, off the event loop
            refused = await asyncio.to_thread(self.runner.prepare, job)
            if refused is not None:
                return refused
        return await self.batch(job)

    @serve.batch
    async def batch(self, jobs: list[VideoJob]) -> list:
        # A thread cannot be interrupted: jobs stop themselves between sampler steps at their deadline.
        return await asyncio.to_thread(self.runner.run, jobs)

    def info(self) -> dict:
        return self.runner.info()


@serve.deployment(name="EmergencyGenerator")
class EmergencyGenerator:
    def __init__(self, config: dict):
        self.cfg = validate(config)
        self.host = ModelHost(self.cfg, _device(self.cfg.serve.emergency.num_gpus))
        self.host.follow_registry(self.cfg.serve.follow_registry_s)
        self.responder = EmergencyResponder(self.cfg, self.host)
        warm_up(self.cfg)

    async def reconfigure(self, user_config: dict) -> None:
        await self.host.reconfigure(user_config)

    async def handle(self, job: EmergencyJob):
        return await self.responder.handle(job)

    def info(self) -> dict:
        return self.responder.info()


def build_app(args: dict) -> serve.Application:
    """The app for `serve run`/`serve deploy` (import path serve.app:build_app) and for tests.
    args: AppArgs (preset, overrides, model, registry_root, api_key_env)."""
    cfg, user_config = resolve_app_config(AppArgs.model_validate(args or {}))
    config = cfg.to_dict()
    s = cfg.serve
    retry = s.retry_after_s
    standard = StandardGenerator.options(**deployment_options(s.standard, retry), user_config=user_config).bind(config)
    emergency = EmergencyGenerator.options(**deployment_options(s.emergency, retry), user_config=user_config).bind(config)
    return Ingress.options(**deployment_options(s.ingress, retry)).bind(config, standard, emergency)
