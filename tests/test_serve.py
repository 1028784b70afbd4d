"""Ray Serve app end to end: real Serve on the session's Ray, real HTTP, a real registry with two
tiny untrained versions. The app is deployed once from serve/config.yaml (as `serve deploy` does);
later deploys change only the generators' user_config, which Serve applies by reconfigure()."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from aiprod.config import load_config
from aiprod.provenance.disclosure import label_box, label_image
from aiprod.serving import ModelHost, request_bucket
from aiprod.serving.generation import Breaker
from tests.serve_app import (AUTH, TINY, V1, V2, c2pa_manifest, decode, deployed_app, publish_adapter,
                             source_type)

@pytest.fixture(scope="module")
def served(ray_cluster, tmp_path_factory):
    with deployed_app(tmp_path_factory, "serve") as app:
        yield app


# --------------------------------------------------------------------------- HTTP API


def test_health_ready_and_openapi(served):
    assert served.http.get("/v1/health").json() == {"status": "ok"}
    ready = served.http.get("/v1/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert ready.json()["standard_version"] == V1
    paths = served.http.get("/openapi.json").json()["paths"]
    assert {"/v1/videos", "/v1/emergency", "/v1/models", "/v1/health", "/v1/ready"} <= set(paths)
    assert served.http.get("/docs").status_code == 200


def test_standard_request_returns_playable_mp4_of_requested_size(served):
    r = served.video(duration_s=1, fps=8, width=48, height=32, seed=3)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "video/mp4"
    assert r.headers["x-model-version"] == V1
    assert r.headers["x-generation-mode"] == "standard"
    assert float(r.headers["x-generation-seconds"]) > 0
    codec, fps, frames = decode(r.content)
    assert codec == "h264" and fps == 8
    assert frames.shape == (9, 32, 48, 3)  # 1 s at 8 fps -> 1 + 4k frames nearest 8 (the causal VAE)
    assert r.headers["x-video-frames"] == "9"
    # Signed C2PA content credentials, and the visible label (serve.disclosure_label) in the corner.
    assert r.headers["x-provenance"] == "signed"
    state, assertions = c2pa_manifest(r.content)
    assert state == "Valid" and source_type(assertions) == "trainedAlgorithmicMedia"
    made = assertions["org.aiprod.generation"]
    assert (made["model_version"], made["mode"], made["language"]) == (V1, "standard", "en")
    x0, y0, x1, y1 = label_box(frames.shape, "en", TINY.serve.template)
    label = label_image("en", 48, 32, TINY.serve.template).astype(int)
    assert np.abs(frames[:, y0:y1, x0:x1].astype(int) - label).mean() < 40


def test_same_shape_requests_are_batched_and_different_shapes_are_not(served):
    with ThreadPoolExecutor(2) as pool:
        same = list(pool.map(lambda seed: served.video(seed=seed), [1, 2]))
    assert [r.status_code for r in same] == [200, 200]
    assert max(int(r.headers["x-batch-size"]) for r in same) == 2
    with ThreadPoolExecutor(2) as pool:
        mixed = list(pool.map(lambda w: served.video(width=w), [32, 48]))
    assert [r.headers["x-batch-size"] for r in mixed] == ["1", "1"]


@pytest.mark.parametrize("language,region", [("en", "Patna, Bihar"), ("hi", "पटना, बिहार")])
def test_emergency_answers_within_deadline(served, language, region):
    start = time.monotonic()
    r = served.emergency(emergency_type="flood", language=language, region=region)
    elapsed = time.monotonic() - start
    assert r.status_code == 200, r.text
    assert elapsed <= float(r.headers["x-deadline-seconds"]) == TINY.serve.emergency_deadline_s
    assert r.headers["x-generation-mode"] == "emergency"  # healthy model: the fast model path
    assert r.headers["x-model-version"] == V1
    assert r.headers["x-motion"] == "still"  # nothing in the words names a direction
    assert "x-template-note" not in r.headers
    codec, fps, frames = decode(r.content)
    assert codec == "h264" and len(frames) / fps >= 5.0
    assert r.headers["x-provenance"] == "signed"
    state, assertions = c2pa_manifest(r.content)
    assert state == "Valid" and source_type(assertions) == "trainedAlgorithmicMedia"
    made = assertions["org.aiprod.generation"]
    assert (made["model_version"], made["mode"], made["language"]) == (V1, "emergency", language)


def test_the_emergency_camera_follows_the_request_or_the_headline(served):
    explicit = served.emergency(emergency_type="cyclone", motion="left:2", deadline_s=TINY.serve.emergency_deadline_s)
    assert explicit.status_code == 200 and explicit.headers["x-generation-mode"] == "emergency"
    assert explicit.headers["x-motion"] == "left:2"
    worded = served.emergency(emergency_type="flood", language="hi", headline="पानी बाईं ओर बढ़ रहा है")
    assert worded.status_code == 200 and worded.headers["x-motion"] == "left"


def test_passed_deadline_on_standard_path_is_504(served):
    r = served.video(deadline_s=0.2)  # the 1 s batch wait alone is longer
    assert r.status_code == 504
    assert "deadline" in r.json()["detail"]


VIDEO_422 = [
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "x" * (TINY.serve.max_prompt_chars + 1)}, "prompt"),
    ({"language": "xx"}, "language"),
    ({"width": TINY.serve.max_width + 4}, "width"),
    ({"height": TINY.serve.max_height + 4}, "height"),
    ({"width": 34}, "width"),
    ({"duration_s": TINY.serve.max_duration_s + 1}, "duration_s"),
    ({"fps": TINY.serve.max_fps + 1}, "fps"),
    ({"steps": TINY.serve.max_steps + 1}, "steps"),
    ({"unknown_field": 1}, "unknown_field"),
]
EMERGENCY_422 = [
    ({"emergency_type": "volcano"}, "emergency_type"),
    ({"emergency_type": "flood", "language": "zz"}, "language"),
    ({"emergency_type": "flood", "variation": 5}, "variation"),
    ({"emergency_type": "flood", "headline": "x" * (TINY.serve.max_headline_chars + 1)}, "headline"),
    ({"emergency_type": "flood", "region": "x" * (TINY.serve.max_region_chars + 1)}, "region"),
    ({"emergency_type": "flood", "deadline_s": TINY.serve.emergency_deadline_s + 1}, "deadline_s"),
    ({"language": "en"}, "emergency_type"),
    ({"emergency_type": "flood", "motion": "sideways"}, "motion"),
]


@pytest.mark.parametrize("body,field", VIDEO_422)
def test_bad_video_request_is_422_naming_the_field(served, body, field):
    r = served.video(**body)
    assert r.status_code == 422, r.text
    assert field in [e["loc"][-1] for e in r.json()["detail"]]


@pytest.mark.parametrize("body,field", EMERGENCY_422)
def test_bad_emergency_request_is_422_naming_the_field(served, body, field):
    r = served.emergency(**body)
    assert r.status_code == 422, r.text
    assert field in [e["loc"][-1] for e in r.json()["detail"]]


def test_api_key_is_required_when_configured(served):
    for path, body in (("/v1/videos", {"prompt": "a cat"}), ("/v1/emergency", {"emergency_type": "fire"})):
        missing = served.http.post(path, json=body)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        wrong = served.http.post(path, json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
    assert served.http.post("/v1/videos", json={"prompt": ""}).status_code == 401  # key before body
    assert served.http.get("/v1/models").status_code == 401
    assert served.http.get("/v1/health").status_code == 200


# ------------------------------------------------------------------ faults and overload


def test_emergency_answers_from_templates_when_model_fails_or_is_slow(served):
    try:
        served.deploy(fault={"emergency_model_fail": True})
        r = served.emergency(emergency_type="cyclone", language="en", region="Puri")
        assert r.status_code == 200
        assert r.headers["x-generation-mode"] == "template"
        assert r.headers["x-model-version"] == "template"
        assert r.headers["x-fallback-reason"] == "model_failed: InjectedFault"
        codec, fps, frames = decode(r.content)
        assert codec == "h264" and len(frames) / fps >= 5.0
        assert r.headers["x-provenance"] == "signed"
        state, assertions = c2pa_manifest(r.content)
        assert state == "Valid" and source_type(assertions) == "algorithmicMedia"
        assert assertions["org.aiprod.generation"]["model_version"] is None
        assert "notes" not in assertions["org.aiprod.generation"]
        r = served.emergency(emergency_type="cyclone", language="en", region="Puri \u10d7")  # Georgian: no font
        assert r.status_code == 200 and "GEORGIAN" in r.headers["x-template-note"]
        [note] = c2pa_manifest(r.content)[1]["org.aiprod.generation"]["notes"]  # the credentials say so too
        assert note.startswith("region: no font for GEORGIAN") and note.endswith("those characters left out")

        served.deploy(fault={"emergency_model_delay_s": 30})
        start = time.monotonic()
        r = served.emergency(emergency_type="tsunami", language="hi", region="चेन्नई", deadline_s=8)
        assert r.status_code == 200 and time.monotonic() - start <= 8
        assert r.headers["x-generation-mode"] == "template"
        assert r.headers["x-fallback-reason"] == "would_miss_deadline"

        # The generator is saturated (1 running + 1 queued): the ingress renders the rest itself.
        def alert(i: int) -> tuple[httpx.Response, float]:
            t0 = time.monotonic()
            resp = served.emergency(emergency_type="fire", variation=i % 5, region="Delhi", deadline_s=8)
            return resp, time.monotonic() - t0

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(alert, range(4)))
        assert [resp.status_code for resp, _ in answers] == [200] * 4
        assert all(elapsed <= 8 for _, elapsed in answers)
        assert {resp.headers["x-generation-mode"] for resp, _ in answers} == {"template"}
        assert "overloaded" in {resp.headers["x-fallback-reason"] for resp, _ in answers}
        assert {resp.headers["x-provenance"] for resp, _ in answers} == {"signed"}  # the ingress's own cards too
    finally:
        served.deploy()
    r = served.emergency(emergency_type="cyclone")
    assert r.headers["x-generation-mode"] == "emergency"  # healthy again after the fault is removed


def test_full_standard_queue_answers_503_with_retry_after(served):
    try:
        # 16 at once against one replica holding 2 ongoing + 2 queued: some must be refused.
        served.deploy(fault={"standard_model_delay_s": 2.0})
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda seed: served.video(seed=seed), range(16)))
    finally:
        served.deploy()
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 503}, codes
    assert 200 in codes and 503 in codes, codes
    for r in answers:
        if r.status_code == 503:
            assert r.headers.get("retry-after") == str(TINY.serve.retry_after_s), (r.headers, r.text)


def test_standard_model_failure_is_500_and_emergency_unaffected(served):
    try:
        served.deploy(fault={"standard_model_fail": True})
        r = served.video()
        assert r.status_code == 500 and "InjectedFault" in r.json()["detail"]
        assert served.emergency(emergency_type="heatwave").status_code == 200
    finally:
        served.deploy()


# ---------------------------------------------------------------------------- versions


def test_version_switch_under_load_loses_no_request(served):
    pid_before = served.http.get("/v1/models", headers=AUTH).json()["standard"]["pid"]
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            r = served.video()
            results.append((r.status_code, r.headers.get("x-model-version", r.text)))

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        while len(results) < 2:
            time.sleep(0.1)
        # user_config only: replicas reconfigure in place. No /v1/models polling meanwhile: a third
        # request in flight can overflow the 2-deep queue while Serve holds routing for reconfigure().
        served.deploy(model=V2, wait=False)
        deadline = time.monotonic() + 60
        while not any(v == V2 for _, v in results) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # a few more requests on the new version
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert all(code == 200 for code, _ in results), [r for r in results if r[0] != 200]
    versions = [v for _, v in results]
    assert V1 in versions and V2 in versions and versions[-1] == V2
    served.wait_applied(V2)  # the emergency generator too
    info = served.http.get("/v1/models", headers=AUTH).json()
    assert info["standard"]["a"]["version"] == V2 and info["emergency"]["a"]["version"] == V2
    assert info["standard"]["pid"] == pid_before  # reconfigured, not restarted
    served.deploy(model="production")  # roll back
    assert served.video().headers["x-model-version"] == V1


def test_replicas_follow_a_promotion_and_a_rollback_in_the_registry(served):
    from aiprod.registry import Registry

    registry = Registry(str(served.registry_root))
    assert served.video().headers["x-model-version"] == V1
    pid = served.http.get("/v1/models", headers=AUTH).json()["standard"]["pid"]
    registry.promote(V2, gates={}, force=True, reason="test: replicas follow production")
    try:
        served.wait_applied("production", version=V2)  # no deploy: the replicas re-read the pointer
        assert served.video().headers["x-model-version"] == V2
        info = served.http.get("/v1/models", headers=AUTH).json()
        assert info["standard"]["a"]["pointer_target"] == V2 and info["standard"]["pid"] == pid
    finally:
        registry.rollback()
    served.wait_applied("production", version=V1)
    assert served.video().headers["x-model-version"] == V1


def test_ab_split_by_request_hash(served):
    ids = [f"req-{i}" for i in range(40)]
    b_ids = [i for i in ids if request_bucket(i) < 0.5][:2]
    a_ids = [i for i in ids if request_bucket(i) >= 0.5][:2]
    try:
        served.deploy(ab={"version": V2, "fraction": 0.5})
        for request_id, arm, version in [(i, "b", V2) for i in b_ids] + [(i, "a", V1) for i in a_ids]:
            for _ in range(2):  # the same request always lands in the same arm
                r = served.http.post("/v1/videos", json={"prompt": "a blue square", "steps": 1},
                                     headers={**AUTH, "X-Request-Id": request_id})
                assert r.status_code == 200
                assert (r.headers["x-ab-arm"], r.headers["x-model-version"]) == (arm, version)
    finally:
        served.deploy()


# --------------------------------------------------------- adapters, the registry A/B pointer

HI_ON_V1, HI_ON_V2 = "pib-videogen-standard-v1.0.0-regional-hi", "pib-videogen-standard-v1.1.0-regional-hi"


@pytest.fixture(scope="module")
def adapters(served):
    """regional-hi adapters in the served registry: one on V1 (production), a newer one on V2."""
    publish_adapter(served.registry_root, V1, HI_ON_V1)
    publish_adapter(served.registry_root, V2, HI_ON_V2, seed=2)


def test_a_request_with_an_adapter_is_answered_by_that_adapter_on_its_arm(served, adapters):
    with ThreadPoolExecutor(2) as pool:
        base, tuned = pool.map(lambda adapter: served.video(seed=5, adapter=adapter), [None, "regional-hi"])
    assert tuned.status_code == 200, tuned.text
    assert (tuned.headers["x-adapter"], tuned.headers["x-model-version"]) == (HI_ON_V1, V1)
    assert "x-adapter" not in base.headers
    generation = c2pa_manifest(tuned.content)[1]["org.aiprod.generation"]  # the credentials name both
    assert (generation["model_version"], generation["adapter"]) == (V1, HI_ON_V1)
    assert "adapter" not in c2pa_manifest(base.content)[1]["org.aiprod.generation"]
    assert np.abs(decode(tuned.content)[2].astype(int) - decode(base.content)[2].astype(int)).mean() > 1
    assert served.http.get("/v1/models", headers=AUTH).json()["standard"]["adapters"]["cached"] == [HI_ON_V1]
    with ThreadPoolExecutor(2) as pool:  # the adapter is loaded now: both within one batch wait
        pair = list(pool.map(lambda adapter: served.video(seed=6, adapter=adapter), [None, "regional-hi"]))
    assert [r.headers["x-batch-size"] for r in pair] == ["1", "1"]  # same shape, but never one batch
    assert [r.headers.get("x-adapter") for r in pair] == [None, HI_ON_V1]


def test_an_adapter_the_serving_model_lacks_is_422_naming_it(served, adapters):
    for adapter, says in (("regional-bn", "no version .* has the specialization 'regional-bn'"),
                          (HI_ON_V2, f"none for {V1}.*is for {V2}"), ("Regional HI", "neither a specialization")):
        r = served.video(adapter=adapter)
        assert r.status_code == 422, r.text
        [error] = r.json()["detail"]
        assert error["loc"][-1] == "adapter" and re.search(says, error["msg"]), error


def test_an_adapter_that_fails_to_load_is_503_with_retry_after_and_is_not_reloaded_per_request(served, adapters):
    from aiprod import adapter_dir
    from aiprod.registry import Registry

    broken = "pib-videogen-standard-v1.0.0-regional-bn"
    publish_adapter(served.registry_root, V1, broken)
    weights = Path(Registry(str(served.registry_root)).store.entry_uri(broken)) / adapter_dir.ADAPTER_WEIGHTS
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    weights.write_bytes(bytes(blob))
    for _ in range(2):
        r = served.video(adapter=broken)  # by version: 'regional-bn' may still resolve to none (cached 0.5 s)
        assert r.status_code == 503, r.text
        assert f"adapter '{broken}' failed to load" in r.json()["detail"] and int(r.headers["retry-after"]) >= 1
    failures = served.http.get("/v1/models", headers=AUTH).json()["standard"]["adapters"]["load_failures"]
    assert failures[broken]["attempts"] == 1  # the second request was refused, not loaded again
    assert served.video(adapter="regional-hi").status_code == 200  # other adapters keep serving


def test_replicas_follow_the_registry_ab_pointer_live(served, adapters):
    from aiprod.registry import Registry

    registry = Registry(str(served.registry_root))

    def answers(**body) -> set[tuple]:
        def one(i: int) -> httpx.Response:
            return served.http.post("/v1/videos", json={"prompt": "a blue square", "steps": 1, **body},
                                    headers={**AUTH, "X-Request-Id": f"ab-{i}"})

        with ThreadPoolExecutor(3) as pool:
            rs = list(pool.map(one, range(3)))
        assert {r.status_code for r in rs} <= {200, 503}, [r.text for r in rs]
        return {(r.headers["x-ab-arm"], r.headers["x-model-version"], r.headers.get("x-adapter"))
                if r.status_code == 200 else (503, r.json()["detail"]) for r in rs}

    def until(expected: set, **body) -> None:  # a 503 (queue full) is retried
        deadline = time.monotonic() + 30
        while (got := answers(**body)) != expected and time.monotonic() < deadline:
            time.sleep(0.3)
        assert got == expected

    registry.set_ab(V2, 1.0, reason="test: every request to the candidate")
    try:
        served.deploy(ab={"version": "registry"})
        until({("b", V2, None)})
        info = served.http.get("/v1/models", headers=AUTH).json()["standard"]
        assert (info["b"]["pointer_target"], info["ab_fraction"]) == (V2, 1.0)
        until({("b", V2, HI_ON_V2)}, adapter="regional-hi")  # adapters on arm b are arm b's
        registry.clear_ab()
        until({("a", V1, None)})  # no deploy: the replicas re-read the pointer
        registry.set_ab(V2, 1.0)
        until({("b", V2, None)})
    finally:
        registry.clear_ab()
        served.deploy()


# ------------------------------------------------------------------- library, no Serve


def test_model_host_swaps_without_breaking_a_running_request(served):
    cfg = load_config("tiny", [f"registry.root={served.registry_root}"])
    host = ModelHost(cfg)
    host.apply({"model": "production"})
    arm, running = host.pick(0.0)
    assert (arm, running.version) == ("a", V1)
    host.apply({"model": V2})
    assert host.pick(0.0)[1].version == V2
    frames = running.pipeline.generate("still works", seconds=0.5, fps=2, height=16, width=16, steps=1)
    assert frames.dtype == np.uint8 and running.version == V1
    host.apply({"model": "pib-videogen-standard-v9.9.9-general"})  # not in the registry
    assert host.pick(0.0)[1].version == V2
    assert "v9.9.9" in host.info()["error"]


def test_breaker_opens_after_failures_and_estimates_latency():
    breaker = Breaker(failures=2, cooldown_s=60)
    assert breaker.skip_reason(5.0) is None
    breaker.record(True, 2.0)
    assert breaker.skip_reason(1.0) == "would_miss_deadline"
    breaker.record(False)
    assert breaker.skip_reason(5.0) is None
    breaker.record(False)
    assert breaker.skip_reason(5.0) == "model_unhealthy"
    breaker.reset()
    assert breaker.skip_reason(5.0) is None


def test_request_bucket_is_stable_and_spread():
    assert request_bucket("abc") == request_bucket("abc")
    buckets = [request_bucket(f"r{i}") for i in range(1000)]
    assert all(0 <= b < 1 for b in buckets)
    assert 0.4 < np.mean(np.array(buckets) < 0.5) < 0.6
