"""Hostile input against the real Serve app over real HTTP (issue 20): values JSON allows but the
API cannot take, oversized bodies, auth before parsing, work past its deadline, work that cannot
fit its deadline, non-finite model output, a production pointer naming a corrupt version, and an
alert storm with the generators saturated. Same deployment as tests/test_serve.py, its own app."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.serve_app import AUTH, TINY, V1, V2, App, decode, deployed_app

JSON = {**AUTH, "content-type": "application/json"}


@pytest.fixture(scope="module")
def served(ray_cluster, tmp_path_factory):
    with deployed_app(tmp_path_factory, "hostile") as app:
        yield app


def raw(app: App, path: str, body: str | bytes, headers: dict | None = None) -> httpx.Response:
    return app.http.post(path, content=body, headers=JSON if headers is None else headers)


def fields(r: httpx.Response) -> list:
    return [e["loc"][-1] for e in r.json()["detail"]]


def wait_for(check, what: str, timeout_s: float = 90.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise TimeoutError(f"{what}: not seen within {timeout_s}s")


def standard_info(app: App) -> dict:
    return app.http.get("/v1/models", headers=AUTH).json()["standard"]


# ---------------------------------------------------------------------------- at the door


BAD_BODIES = [  # (path, raw JSON body, field named in the 422)
    ("/v1/emergency", '{"emergency_type": "flood", "deadline_s": NaN}', "deadline_s"),
    ("/v1/emergency", '{"emergency_type": "flood", "deadline_s": -Infinity}', "deadline_s"),
    ("/v1/emergency", '{"emergency_type": "flood", "region": "\\udc00"}', "region"),
    ("/v1/emergency", '{"emergency_type": "flood", "variation": 1e400}', "variation"),
    ("/v1/videos", '{"prompt": "\\ud800"}', "prompt"),
    ("/v1/videos", '{"prompt": "x", "duration_s": Infinity}', "duration_s"),
    ("/v1/videos", '{"prompt": "x", "guidance": 1e308}', "guidance"),
    ("/v1/videos", '{"prompt": "x", "guidance": Infinity}', "guidance"),
    ("/v1/videos", '{"prompt": "x", "seed": 18446744073709551616}', "seed"),
    ("/v1/videos", '{"prompt": "x", "seed": -1}', "seed"),
    ("/v1/videos", '{"prompt": "x", "fps": 1000000}', "fps"),
    ("/v1/videos", '{"prompt": "x", "steps": 100000}', "steps"),
    ("/v1/videos", '{"prompt": "x", "deadline_s": NaN}', "deadline_s"),
]


@pytest.mark.parametrize("path,body,field", BAD_BODIES)
def test_non_finite_numbers_surrogates_and_out_of_range_values_are_422_naming_the_field(served, path, body, field):
    r = raw(served, path, body)
    assert r.status_code == 422, r.text
    assert field in fields(r)
    r.content.decode("utf-8")  # the answer is valid JSON text


def test_a_rejected_value_comes_back_as_a_short_excerpt(served):
    r = served.video(language="x" * 20_000)
    assert r.status_code == 422 and fields(r) == ["language"]
    assert len(r.content) < 1_000, len(r.content)


def test_body_size_is_capped_before_parsing(served):
    big = json.dumps({"prompt": "x" * (TINY.serve.max_body_bytes + 1)})
    for path in ("/v1/videos", "/v1/emergency"):
        r = raw(served, path, big)
        assert r.status_code == 413 and "serve.max_body_bytes" in r.json()["detail"]


def test_api_key_is_checked_before_the_body_is_parsed(served):
    for path in ("/v1/videos", "/v1/emergency"):
        for body in ("{not json", '{"prompt": NaN}', "x" * (TINY.serve.max_body_bytes + 1)):
            assert raw(served, path, body, {"content-type": "application/json"}).status_code == 401
        r = raw(served, path, "{not json")
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"


# ---------------------------------------------------------------------------- deadlines


def test_work_past_its_deadline_is_abandoned_and_frees_its_slot(served):
    """Each sampler step takes 1 s here (fault): a 30-step request with a 3 s deadline must stop
    after a few steps, not hold the replica for 30 s; the next request is then served at once."""
    try:
        served.deploy(fault={"standard_step_delay_s": 1.0})
        before = standard_info(served)["cost"]["abandoned"]
        r = served.video(steps=30, deadline_s=3)
        assert r.status_code == 504, r.text
        cost = wait_for(lambda: (c := standard_info(served)["cost"])["abandoned"] > before and c,
                        "the abandoned request")
        assert cost["last_abandoned"]["steps"] == 30 and cost["last_abandoned"]["steps_done"] < 10, cost
        r = served.video(steps=1, deadline_s=20)  # behind 30 s of unabandoned work this would be 504
        assert r.status_code == 200, r.text

        # The replica now knows what a step costs: a request that cannot fit is refused before it starts.
        r = served.video(steps=40, deadline_s=5)
        assert r.status_code == 422, r.text
        error = r.json()["detail"][0]
        assert error["loc"][-1] == "deadline_s" and "needs about" in error["msg"] and "deadline_s of 5s" in error["msg"]
        after = standard_info(served)["cost"]
        assert after["abandoned"] == cost["abandoned"] and after["refused_over_deadline"] >= 1
    finally:
        served.deploy()


def test_non_finite_output_is_an_error_on_the_standard_path_and_a_card_on_the_emergency_path(served, tmp_path):
    import torch

    from aiprod.config import load_config
    from aiprod.diffusion.pipeline import VideoPipeline
    from aiprod.models import build_model

    cfg = load_config("tiny")
    model = build_model(cfg.model)
    with torch.no_grad():
        model.denoiser.final_proj.weight.fill_(float("nan"))
    nan_dir = VideoPipeline(cfg, model, version="nan-weights").save_pretrained(tmp_path / "nan")
    try:
        served.deploy(model=str(nan_dir))
        r = served.video()
        assert r.status_code == 500 and "NonFiniteOutput" in r.json()["detail"], r.text
        r = served.emergency(emergency_type="flood")
        assert r.status_code == 200 and r.headers["x-generation-mode"] == "template"
        assert r.headers["x-fallback-reason"] == "model_failed: NonFiniteOutput"
    finally:
        served.deploy()


# ------------------------------------------------------------------------------ registry


def test_a_production_pointer_to_a_corrupt_version_is_backed_off_and_reported(served):
    root = served.registry_root
    weights = root / V2 / "model.safetensors"
    good_weights, good_pointer = weights.read_bytes(), (root / "production.json").read_bytes()
    damaged = bytearray(good_weights)
    damaged[len(damaged) // 2] ^= 0xFF
    try:
        weights.write_bytes(bytes(damaged))
        # As a client that does not verify would leave it (jobs/registry.py promote/rollback now refuse).
        (root / "production.json").write_text(json.dumps({"version": V2, "previous": [V1]}))
        ready = wait_for(lambda: (r := served.http.get("/v1/ready")).status_code == 503 and r, "/v1/ready 503")
        assert any("model load failed" in p and V2 in p for p in ready.json()["problems"]), ready.json()
        # /v1/ready goes 503 at the first replica's failure: the standard one may report it a moment later
        failure = wait_for(lambda: standard_info(served)["load_failures"].get("production"),
                           "the standard replica's load failure")
        assert failure["target"] == V2 and failure["attempts"] >= 1 and "sha256 mismatch" in failure["error"]
        r = served.video()
        assert r.status_code == 200 and r.headers["x-model-version"] == V1  # the loaded version keeps serving
    finally:
        (root / "production.json").write_bytes(good_pointer)
        weights.write_bytes(good_weights)
    wait_for(lambda: served.http.get("/v1/ready").status_code == 200, "/v1/ready 200 again")
    assert standard_info(served)["load_failures"] == {}


# ------------------------------------------------------------------------------- alerts


def test_a_hundred_concurrent_alerts_with_the_generator_saturated_all_answer_in_time(served):
    """The emergency generator holds one slow request and one queued; the other 98 are rendered by
    the ingress itself, within its own budget."""
    deadline_s = 10

    def alert(i: int) -> tuple[int, float, str]:
        start = time.monotonic()
        r = served.emergency(emergency_type="flood", variation=i % 5, region=f"ward {i}", deadline_s=deadline_s)
        return r.status_code, time.monotonic() - start, r.headers.get("x-generation-mode", r.text)

    try:
        served.deploy(fault={"emergency_model_delay_s": 60})
        with ThreadPoolExecutor(100) as pool:
            answers = list(pool.map(alert, range(100)))
    finally:
        served.deploy()
    assert [code for code, _, _ in answers] == [200] * 100, [a for a in answers if a[0] != 200][:3]
    assert {mode for _, _, mode in answers} == {"template"}
    slowest = max(elapsed for _, elapsed, _ in answers)
    assert slowest <= deadline_s, slowest
    r = served.emergency(emergency_type="flood", region="ward 1")
    codec, _, _ = decode(r.content)
    assert r.status_code == 200 and codec == "h264"


def test_a_pointer_target_that_fails_to_load_is_retried_only_after_its_back_off(tmp_path):
    from aiprod.config import load_config
    from aiprod.serving import ModelHost
    from aiprod.serving.model_host import CURRENT

    (tmp_path / "production.json").write_text(json.dumps({"version": V2}))
    calls = []

    def loader(spec: str, cfg, device: str):
        calls.append(spec)
        raise RuntimeError("model.safetensors: sha256 mismatch")

    cfg = load_config("tiny", [f"registry.root={tmp_path}", "serve.load_retry_s=3600", "serve.load_retry_max_s=86400"])
    host = ModelHost(cfg, loader=loader)
    host.apply({"model": "production"})
    failure = host.load_failures["production"]
    assert (failure.target, failure.attempts, len(calls)) == (V2, 1, 1)
    assert not host.pointers_moved()  # the follower does not try V2 again before its back-off
    host.apply(CURRENT)  # a retry that fails again doubles the wait
    assert host.load_failures["production"].attempts == 2
    assert host.info()["load_failures"]["production"]["retry_in_s"] > 3600
    (tmp_path / "production.json").write_text(json.dumps({"version": V1}))
    assert host.pointers_moved()  # another target is tried at once
