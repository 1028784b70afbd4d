"""Serving overhead, overload and autoscaling on a local Ray (tiny preset, CPU).

    python bench/serve.py [--requests 30] [--clients 8] [--load-s 20] [--overload-clients 16]

1. Emergency template requests: the same render (aiprod.serving.render_template) called directly
   in-process vs through Serve HTTP (ingress -> EmergencyGenerator), sequentially: p50/p99 and the
   overhead in ms.
2. Concurrent emergency load: requests/s, and EmergencyGenerator replicas scaling up under load and
   back down after it.
3. Standard requests past capacity (a tiny untrained model): 503s at once rather than unbounded
   latency; the slowest accepted request stays within its deadline.
Signing: the C2PA manifest the ingress signs into each answer (aiprod.provenance), timed on the same
cards as 1.; goal: below 5 % of the template's render time. `--signing-only` measures just that (no Ray).
Last line: JSON {direct_p50_ms, sign_p50_ms, sign_fraction, serve_p50_ms, serve_p99_ms, overhead_p50_ms,
requests_s, rejected_503, max_replicas_seen, ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
# This file is named serve.py: with bench/ on sys.path, Ray would hand that path to its workers and
# `import serve.app` (the app) would find this script instead. The repository root goes first.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from aiprod.config import load_config  # noqa: E402
from aiprod.emergency import AlertRequest  # noqa: E402
from aiprod.serving import render_template  # noqa: E402

APP = "aiprod"
OVERRIDES = [
    "serve.ingress.autoscaling.max_replicas=1",
    "serve.ingress.num_cpus=0.25",
    "serve.emergency.num_cpus=0.25",
    "serve.emergency.max_ongoing_requests=2",
    "serve.emergency.max_queued_requests=-1",
    "serve.emergency.autoscaling.min_replicas=1",
    "serve.emergency.autoscaling.max_replicas=3",
    "serve.emergency.autoscaling.target_ongoing_requests=1",
    "serve.emergency.autoscaling.upscale_delay_s=0.5",
    "serve.emergency.autoscaling.downscale_delay_s=3",
    "serve.emergency.autoscaling.metrics_interval_s=0.5",
    "serve.emergency.autoscaling.look_back_period_s=2",
    "serve.standard.num_cpus=0.25",
    "serve.standard.max_ongoing_requests=2",
    "serve.standard.max_queued_requests=2",
    "serve.standard.autoscaling.max_replicas=1",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values) * 1000, q)) if values else float("nan")


def make_checkpoint(directory: Path) -> Path:
    from aiprod.diffusion.pipeline import VideoPipeline
    from aiprod.models import build_model

    cfg = load_config("tiny")
    return VideoPipeline(cfg, build_model(cfg.model), version="bench-untrained").save_pretrained(directory / "ckpt")


def deploy(port: int, checkpoint: Path) -> None:
    """serve/config.yaml with bench settings; the emergency generator gets no model (templates)."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    conf = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    conf["http_options"] = {"host": "127.0.0.1", "port": port}
    app = conf["applications"][0]
    app["runtime_env"] = {"env_vars": {"PYTHONPATH": str(ROOT)}}
    app["args"]["overrides"] = OVERRIDES
    models = {"StandardGenerator": str(checkpoint), "EmergencyGenerator": None}
    for deployment in app["deployments"]:
        deployment["user_config"] = {"model": models[deployment["name"]], "ab": None, "fault": {}}
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(conf), _blocking=True)


def running_replicas(name: str) -> int:
    from ray import serve

    deployment = serve.status().applications[APP].deployments[name]
    return sum(n for state, n in deployment.replica_states.items() if str(getattr(state, "value", state)) == "RUNNING")


def alert_body(i: int) -> dict:
    return {"emergency_type": ["flood", "cyclone", "fire", "tsunami"][i % 4], "variation": i % 5,
            "language": "hi" if i % 2 else "en", "region": "पटना" if i % 2 else "Patna"}


def signing_cost(cfg, requests: list[AlertRequest]) -> dict:
    """Template render vs signing its MP4, per clip, interleaved on the same cards."""
    from aiprod.provenance import Facts, Provenance, alert_prompt

    provenance = Provenance(cfg.provenance)
    render_template(requests[0], cfg, "warm-up")
    render_s, sign_s = [], []
    for request in requests:
        t0 = time.perf_counter()
        card = render_template(request, cfg, "bench")
        t1 = time.perf_counter()
        provenance.sign(card.mp4, Facts("template", "template", request.language,
                                        alert_prompt(request.emergency_type, region=request.region)))
        render_s.append(t1 - t0)
        sign_s.append(time.perf_counter() - t1)
    render_p50, sign_p50 = percentile_ms(render_s, 50), percentile_ms(sign_s, 50)
    print(f"signing, x{len(requests)}: template render p50 {render_p50:.1f} ms, C2PA signing p50 {sign_p50:.1f} ms "
          f"(p99 {percentile_ms(sign_s, 99):.1f} ms) = {100 * sign_p50 / render_p50:.1f} % of the render (goal < 5 %)")
    return {"direct_p50_ms": round(render_p50, 1), "sign_p50_ms": round(sign_p50, 2),
            "sign_fraction": round(sign_p50 / render_p50, 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--requests", type=int, default=30, help="sequential requests per side")
    parser.add_argument("--clients", type=int, default=8, help="concurrent emergency clients")
    parser.add_argument("--load-s", type=float, default=20.0, help="duration of the concurrent load")
    parser.add_argument("--overload-clients", type=int, default=16, help="concurrent standard clients")
    parser.add_argument("--scale-down-wait-s", type=float, default=90.0)
    parser.add_argument("--signing-only", action="store_true", help="only time C2PA signing against the render")
    args = parser.parse_args(argv)
    if args.signing_only:
        cfg = load_config("tiny", OVERRIDES)
        print(json.dumps(signing_cost(cfg, [AlertRequest(**alert_body(i)) for i in range(args.requests)])))
        return 0

    import ray
    from ray import serve

    cfg = load_config("tiny", OVERRIDES)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="aiprod-bench-serve-"))
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        start = time.perf_counter()
        deploy(port, make_checkpoint(tmp))
        print(f"deployed in {time.perf_counter() - start:.1f}s")
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)

        # 1. direct vs through Serve, same render, sequential; and what signing adds
        requests = [AlertRequest(**alert_body(i)) for i in range(args.requests)]
        signing = signing_cost(cfg, requests)
        direct = []
        for request in requests:
            t0 = time.perf_counter()
            render_template(request, cfg, "bench")
            direct.append(time.perf_counter() - t0)
        http.post("/v1/emergency", json=alert_body(0))  # warm the path
        through = []
        modes = set()
        for i in range(args.requests):
            t0 = time.perf_counter()
            r = http.post("/v1/emergency", json=alert_body(i))
            through.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
            modes.add(r.headers["x-generation-mode"])
        direct_p50, serve_p50 = percentile_ms(direct, 50), percentile_ms(through, 50)
        print(f"emergency template, sequential x{args.requests}: direct p50 {direct_p50:.1f} ms  "
              f"serve p50 {serve_p50:.1f} ms p99 {percentile_ms(through, 99):.1f} ms  "
              f"overhead p50 {serve_p50 - direct_p50:.1f} ms  (modes {sorted(modes)})")

        # 2. concurrent load: throughput and autoscaling
        replicas_seen = [running_replicas("EmergencyGenerator")]
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                replicas_seen.append(running_replicas("EmergencyGenerator"))
                time.sleep(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        load_latencies, load_codes = [], []
        load_end = time.perf_counter() + args.load_s

        def client(c: int) -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as h:
                i = c
                while time.perf_counter() < load_end:
                    t0 = time.perf_counter()
                    r = h.post("/v1/emergency", json=alert_body(i))
                    load_latencies.append(time.perf_counter() - t0)
                    load_codes.append(r.status_code)
                    i += args.clients

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client, range(args.clients)))
        elapsed = time.perf_counter() - t0
        requests_s = len(load_latencies) / elapsed
        max_replicas = max(replicas_seen)
        print(f"emergency load, {args.clients} clients for {elapsed:.0f}s: {requests_s:.2f} req/s, "
              f"p50 {percentile_ms(load_latencies, 50):.0f} ms p99 {percentile_ms(load_latencies, 99):.0f} ms, "
              f"non-200: {sum(c != 200 for c in load_codes)}, replicas 1 -> {max_replicas}")
        wait_end = time.perf_counter() + args.scale_down_wait_s
        while running_replicas("EmergencyGenerator") > 1 and time.perf_counter() < wait_end:
            time.sleep(1.0)
        stop.set()
        replicas_after = running_replicas("EmergencyGenerator")
        print(f"replicas after the load: {replicas_after} (min_replicas 1, downscale_delay_s "
              f"{cfg.serve.emergency.autoscaling.downscale_delay_s})")

        # 3. standard path past capacity: 503 at once, bounded latency for the accepted
        http.post("/v1/videos", json={"prompt": "warm up", "steps": 1})
        over_codes, over_latency = [], []

        def standard(i: int) -> None:
            t0 = time.perf_counter()
            r = http.post("/v1/videos", json={"prompt": f"a red circle {i}", "steps": 2})
            over_latency.append((r.status_code, time.perf_counter() - t0))
            over_codes.append(r.status_code)

        with ThreadPoolExecutor(args.overload_clients) as pool:
            list(pool.map(standard, range(args.overload_clients * 3)))
        rejected = [t for code, t in over_latency if code == 503]
        accepted = [t for code, t in over_latency if code == 200]
        print(f"standard overload, {args.overload_clients} clients x3 (capacity "
              f"{cfg.serve.standard.max_ongoing_requests}+{cfg.serve.standard.max_queued_requests} queued): "
              f"{len(accepted)} x 200 (max {max(accepted, default=0) * 1000:.0f} ms, deadline "
              f"{cfg.serve.standard_deadline_s:.0f} s), {len(rejected)} x 503 (p50 {percentile_ms(rejected, 50):.0f} ms), "
              f"other {sorted(set(over_codes) - {200, 503})}")
        http.close()
        result = {
            **signing,
            "direct_p50_ms": round(direct_p50, 1),
            "serve_p50_ms": round(serve_p50, 1),
            "serve_p99_ms": round(percentile_ms(through, 99), 1),
            "overhead_p50_ms": round(serve_p50 - direct_p50, 1),
            "requests_s": round(requests_s, 2),
            "rejected_503": len(rejected),
            "max_replicas_seen": max_replicas,
            "replicas_after_load": replicas_after,
            "emergency_max_ms": round(max(load_latencies, default=0) * 1000),
            "emergency_deadline_ms": round(cfg.serve.emergency_deadline_s * 1000),
            "accepted_max_ms": round(max(accepted, default=0) * 1000),
            "rejected_p50_ms": round(percentile_ms(rejected, 50), 1),
        }
    finally:
        serve.shutdown()
        ray.shutdown()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
