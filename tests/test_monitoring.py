"""Monitoring: the loss anomaly detector on synthetic sequences, bounded Serve labels, the alert rules
and dashboard in deploy/ against the metric catalog, and, on the session's real Ray cluster, the
aiprod series scraped over HTTP from Ray's metrics agent after Serve requests and a tiny training run."""

from __future__ import annotations

import json
import math
import threading
import time

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from aiprod.config import load_config
from aiprod.config.training import AnomalyConfig
from aiprod.monitoring import catalog, rules_check, serve_metrics
from aiprod.monitoring.anomaly import LossAnomalyDetector
from tests.serve_app import V1, deployed_app

SCRAPE_TIMEOUT_S = 30


# ------------------------------------------------------------------------------ scraping


def scrape(url: str) -> dict[tuple, float]:
    """{(name, frozenset of its labels but Ray's process ones): value} of every ray_aiprod_* sample."""
    text = httpx.get(url, timeout=10).text
    samples: dict[tuple, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("ray_aiprod_"):
                labels = frozenset((k, v) for k, v in s.labels.items()
                                   if k not in ("Component", "NodeAddress", "SessionName", "Version", "WorkerId",
                                                "otel_scope_name", "otel_scope_schema_url", "otel_scope_version"))
                samples[(s.name, labels)] = samples.get((s.name, labels), 0.0) + s.value
    return samples


def total(samples: dict[tuple, float], name: str, **labels: str) -> float:
    """Sum of `name` over the series whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def wait_for(url: str, ready, timeout: float = SCRAPE_TIMEOUT_S) -> dict[tuple, float]:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if ready(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.5)


# ----------------------------------------------------------------------- anomaly detector


def noisy_descent(steps: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 1.0 / np.sqrt(1 + np.arange(steps) / 10) * (1 + 0.05 * rng.standard_normal(steps))


def events(losses, cfg: AnomalyConfig) -> list[tuple[str, int]]:
    detector = LossAnomalyDetector(cfg)
    return [(a.kind, a.step) for step, loss in enumerate(losses) for a in detector.observe(float(loss), step)]


def test_a_loss_spike_is_reported_at_its_step_and_a_noisy_descent_raises_nothing():
    cfg = AnomalyConfig(plateau_steps=1000)
    losses = noisy_descent(300)
    assert events(losses, cfg) == []
    losses[150] *= 4
    assert events(losses, cfg) == [("loss_spike", 150)]  # and the steps after it are judged normally again
    losses[5] *= 4  # inside warmup_steps: not judged
    assert events(losses, cfg) == [("loss_spike", 150)]


def test_a_huge_spike_does_not_blind_the_detector_to_the_next_one():
    losses = noisy_descent(300)
    losses[150] *= 100
    losses[155] *= 3  # judged against statistics that took in the first spike only up to its threshold
    assert events(losses, AnomalyConfig(plateau_steps=1000)) == [("loss_spike", 150), ("loss_spike", 155)]


def test_a_plateau_is_reported_once_per_window_while_it_lasts():
    cfg = AnomalyConfig(plateau_steps=50, plateau_min_improvement=0.01)
    losses = np.concatenate([0.98 ** np.arange(100), np.full(120, 0.98 ** 99)])  # best at step 99, then flat
    assert events(losses, cfg) == [("loss_plateau", 149), ("loss_plateau", 199)]
    falling = 1.0 / np.arange(1, 400)  # still improving by more than 1% per 50 steps
    assert events(falling, cfg) == []
    assert events(losses, cfg.model_copy(update={"enabled": False})) == []


def test_anomalies_are_written_to_metrics_jsonl_and_restart_with_each_phase(tmp_path):
    from aiprod.training.run_log import RunLogger

    logger = RunLogger(str(tmp_path / "run"), AnomalyConfig(warmup_steps=5, plateau_steps=1000))
    losses = list(noisy_descent(40))
    losses[30] *= 5
    for step, loss in enumerate(losses):
        logger.log({"phase": 0, "step": step, "loss": loss, "lr": 1e-3}, step)
    for step, loss in enumerate([50.0 + 0.1 * (i % 3) for i in range(10)], start=40):  # another phase, scale x100
        logger.log({"phase": 1, "step": step - 40, "loss": loss, "lr": 1e-3}, step)
    logger.close()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    anomalies = [r for r in records if r.get("event") == "anomaly"]
    assert [(a["kind"], a["global_step"], a["phase"]) for a in anomalies] == [("loss_spike", 30, 0)]
    assert anomalies[0]["value"] > anomalies[0]["threshold"] > anomalies[0]["baseline"]


def test_training_events_feed_their_counters(monkeypatch):
    from aiprod.monitoring import training_metrics

    seen = []
    monkeypatch.setattr(training_metrics, "record", lambda name, value=1.0, **labels: seen.append((name, value)))
    monitor = training_metrics.TrainingMonitor("r1")
    for event in ({"event": "nonfinite_loss", "nan_streak": 1}, {"event": "nonfinite_loss", "nan_streak": 2},
                  {"event": "rollback"}, {"event": "checkpoint", "why": "interval", "seconds": 1.5},
                  {"event": "resumed"}):
        assert monitor.observe(event) == []
    assert seen == [("aiprod_train_nan_skips", 1), ("aiprod_train_nan_skips", 1), ("aiprod_train_rollbacks", 1),
                    ("aiprod_train_checkpoints", 1), ("aiprod_train_checkpoint_seconds", 1.5)]


def test_a_tune_trials_report_sets_its_figures(monkeypatch):
    from aiprod.monitoring import training_metrics

    seen = []
    monkeypatch.setattr(training_metrics, "record",
                        lambda name, value=1.0, **labels: seen.append((name, value, labels)))
    training_metrics.trial_report("t1", {"val_objective": 0.25, "loss": 0.5, "global_step": 9, "val_s": 2.0})
    assert seen == [("aiprod_tune_trial_reports", 1, {"trial": "t1"}),
                    ("aiprod_tune_trial_objective", 0.25, {"trial": "t1"}),
                    ("aiprod_tune_trial_loss", 0.5, {"trial": "t1"}), ("aiprod_tune_trial_step", 9, {"trial": "t1"}),
                    ("aiprod_tune_validation_seconds", 2.0, {"trial": "t1"})]


# ------------------------------------------------------------------------- serve labels


@pytest.mark.parametrize("reason,label", [
    ("emergency_generator_failed: ValueError", "generator_failed"),
    ("model_failed: InjectedFault", "model_failed"),
    ("emergency_generator_timeout", "timeout"),
    ("would_miss_deadline", "timeout"),
    ("overloaded; card not rendered within 0.4s: the type's default card", "overloaded"),
    ("ingress_failed: KeyError", "ingress_failed"),
    ("something new: with free text 12345", "other"),
    ("", "other"),
])
def test_free_text_fallback_reasons_map_to_a_bounded_label_set(reason, label):
    assert serve_metrics.fallback_label(reason) == label


def test_each_answer_status_feeds_its_counters(monkeypatch):
    seen = []
    monkeypatch.setattr(serve_metrics, "record", lambda name, value=1.0, **labels: seen.append((name, labels)))
    serve_metrics.record_answer("videos", 503, {}, 0.01)
    serve_metrics.record_answer("videos", 504, {}, 0.01)
    serve_metrics.record_answer("emergency", 200, {"x-generation-mode": "template", "x-provenance": "unsigned",
                                                   "x-fallback-reason": "overloaded"}, 0.2)
    serve_metrics.record_answer("emergency", 200, {"x-generation-mode": "template", "x-provenance": "signed",
                                                   "x-fallback-reason": "overloaded"}, 0.2)
    serve_metrics.record_answer("videos", 200, {"x-generation-mode": "standard", "x-model-version": "v1",
                                                "x-ab-arm": "b", "x-adapter": "v1.1-regional-hi"}, 0.5)
    names = [name for name, _ in seen]
    assert seen.count(("aiprod_serve_model_answers", {"endpoint": "videos", "version": "v1", "arm": "b",
                                                      "adapter": "v1.1-regional-hi"})) == 1
    assert names.count("aiprod_serve_rejected") == 1 and names.count("aiprod_serve_deadline_missed") == 1
    assert seen.count(("aiprod_serve_template_fallbacks", {"reason": "overloaded"})) == 2
    assert seen.count(("aiprod_emergency_unsigned", {"reason": "signing_failed"})) == 1
    assert ("aiprod_serve_requests", {"endpoint": "emergency", "status": "200", "path": "template"}) in seen
    assert names.count("aiprod_serve_model_answers") == 1  # a template card is not a model's answer


# ------------------------------------------------------------------- deploy/ rule files


def test_the_alert_rules_are_well_formed_and_name_only_exported_metrics():
    rules = yaml.safe_load(rules_check.RULES_FILE.read_text())
    assert rules_check.check_rules(rules) == []
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {"EmergencyAnsweredByTemplate", "EmergencyServerError", "ServeRejectingRequests", "TrainingStalled",
            "TrainingRunVanished", "TrainingNaNStreak", "TrainingDataStarved"} <= alerts
    checked = rules_check.promtool(rules_check.RULES_FILE)  # None where Debian's promtool is not installed
    assert checked is None or checked[0], checked


R = "ray_aiprod_"
# alert -> (series that should make it fire, series of a healthy service); values every minute, judged at 15m
ALERT_CASES = {
    "EmergencyAnsweredByTemplate": (
        {R + 'serve_requests_total{endpoint="emergency", path="template", status="200"}': "0+6x30",
         R + 'serve_requests_total{endpoint="emergency", path="emergency_model", status="200"}': "0+4x30"},
        {R + 'serve_requests_total{endpoint="emergency", path="template", status="200"}': "0x30",
         R + 'serve_requests_total{endpoint="emergency", path="emergency_model", status="200"}': "0+10x30"}),
    "EmergencyServerError": (
        {R + 'serve_requests_total{endpoint="emergency", path="none", status="500"}': "0x12 1x18"},
        {R + 'serve_requests_total{endpoint="emergency", path="none", status="500"}': "1x30"}),  # an old one
    "EmergencyAlertsUnsigned": ({R + 'emergency_unsigned_total{reason="signing_failed"}': "0x12 1x18"},
                                {R + 'emergency_unsigned_total{reason="signing_failed"}': "0x30"}),
    "ServeRejectingRequests": (
        {R + 'serve_rejected_total{endpoint="videos"}': "0+1x30",
         R + 'serve_requests_total{endpoint="videos", path="none", status="503"}': "0+10x30"},
        {R + 'serve_rejected_total{endpoint="videos"}': "0x30",
         R + 'serve_requests_total{endpoint="videos", path="standard", status="200"}': "0+10x30"}),
    "TrainingStalled": ({R + 'train_last_step_time_seconds{run="r"}': "0x30"},  # time() is 900 at 15m
                        {R + 'train_last_step_time_seconds{run="r"}': "0+60x30"}),
    "TrainingRunVanished": ({R + 'train_eta_seconds{run="r"}': "900-10x8 _x22"},  # gone at 8m with 820 s left
                            {R + 'train_eta_seconds{run="r"}': "240-30x8 _x22"}),  # gone at 8m, its phase done
    "TrainingNaNStreak": ({R + 'train_nan_skips_total{run="r"}': "0x12 1 2x17"},
                          {R + 'train_nan_skips_total{run="r"}': "0x30"}),
    "TrainingDataStarved": ({R + 'train_data_wait_share{run="r"}': "0.7x30"},
                            {R + 'train_data_wait_share{run="r"}': "0.2x30"}),
}


@pytest.mark.skipif(rules_check.shutil.which("promtool") is None, reason="promtool not installed (Debian: prometheus)")
def test_each_alert_fires_on_its_situation_and_not_on_a_healthy_service(tmp_path):
    rules = yaml.safe_load(rules_check.RULES_FILE.read_text())
    exprs = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    tests = []
    for alert, cases in ALERT_CASES.items():
        for series, fires in zip(cases, (True, False)):
            tests.append({"interval": "1m", "input_series": [{"series": k, "values": v} for k, v in series.items()],
                          "promql_expr_test": [{"expr": f"count({exprs[alert]})", "eval_time": "15m",
                                                "exp_samples": [{"labels": "{}", "value": 1}] if fires else []}]})
    spec = tmp_path / "rules-test.yml"
    spec.write_text(yaml.safe_dump({"tests": tests}))
    done = rules_check.subprocess.run([rules_check.shutil.which("promtool"), "test", "rules", str(spec)],
                                      capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rules_check_names_what_is_wrong():
    rules = yaml.safe_load(rules_check.RULES_FILE.read_text())
    rule = rules["groups"][0]["rules"][0]
    rule["expr"] = rule["expr"].replace("ray_aiprod_serve_requests_total", "ray_aiprod_serve_request_total", 1)
    rule["for"] = "5 minutes"
    del rule["labels"]["severity"]
    rules["groups"][1]["rules"][0]["alert"] = rule["alert"]
    problems = "\n".join(rules_check.check_rules(rules))
    assert "unknown metric 'ray_aiprod_serve_request_total'" in problems
    assert "for: '5 minutes' is not a duration" in problems
    assert "labels.severity" in problems and "is defined twice" in problems


def test_the_dashboard_shows_every_exported_metric_and_no_unknown_one():
    dashboard = json.loads(rules_check.DASHBOARD_FILE.read_text())
    assert rules_check.check_dashboard(dashboard) == []
    used = set().union(*(rules_check.metric_names(e) for _, e in rules_check.dashboard_exprs(dashboard)))
    missing = [s.name for s in catalog.SPECS if not catalog.exported_names(s) & used]
    assert missing == []
    assert rules_check.main([]) == 0


def test_promql_metric_names_skip_functions_labels_and_durations():
    expr = ('histogram_quantile(0.95, sum by (le, endpoint) (rate(ray_aiprod_serve_request_seconds_bucket'
            '{endpoint="emergency", path=~"temp.*"}[5m]))) > on(endpoint) group_left ray_x offset 1h')
    assert rules_check.metric_names(expr) == {"ray_aiprod_serve_request_seconds_bucket", "ray_x"}


# ------------------------------------------------------- real Ray: Serve, scraped over HTTP


def test_serve_answers_are_counted_by_endpoint_status_and_path(ray_cluster, ray_metrics_url, tmp_path_factory):
    with deployed_app(tmp_path_factory, "monitoring") as app:
        before = scrape(ray_metrics_url)
        assert app.video().status_code == 200
        assert app.video(deadline_s=0.2).status_code == 504  # the 1 s batch wait alone is longer
        assert app.video(prompt="").status_code == 422
        assert app.http.post("/v1/videos", json={"prompt": "x"}).status_code == 401
        assert app.emergency(emergency_type="flood").headers["x-generation-mode"] == "emergency"
        card = app.emergency(emergency_type="flood", deadline_s=2)  # within emergency_reserve_s: no model
        assert card.headers["x-generation-mode"] == "template"
        app.deploy(ab={"version": "pib-videogen-standard-v9.9.9-general", "fraction": 0.5}, wait=False)

        expected = {
            ("ray_aiprod_serve_requests_total", ("videos", "200", "standard")): 1,
            ("ray_aiprod_serve_requests_total", ("videos", "504", "none")): 1,
            ("ray_aiprod_serve_requests_total", ("videos", "422", "none")): 1,
            ("ray_aiprod_serve_requests_total", ("videos", "401", "none")): 1,
            ("ray_aiprod_serve_requests_total", ("emergency", "200", "emergency_model")): 1,
            ("ray_aiprod_serve_requests_total", ("emergency", "200", "template")): 1,
        }

        def delta(samples, name, **labels):  # over the series scraped now: a replica gone since counts no more
            want = set(labels.items())
            return sum(v - before.get((n, ls), 0.0) for (n, ls), v in samples.items() if n == name and want <= ls)

        def counts(samples):
            return {(name, key): delta(samples, name, endpoint=key[0], status=key[1], path=key[2])
                    for name, key in expected}

        def ready(samples):
            return counts(samples) == expected and delta(samples, "ray_aiprod_model_load_failures_total") >= 2

        after = wait_for(ray_metrics_url, ready)
    assert counts(after) == expected
    assert delta(after, "ray_aiprod_serve_deadline_missed_total", endpoint="videos", deployment="Ingress") == 1
    assert delta(after, "ray_aiprod_serve_template_fallbacks_total", reason="deadline_too_short") == 1
    assert delta(after, "ray_aiprod_serve_model_answers_total", endpoint="videos", version=V1, arm="a") == 1
    assert delta(after, "ray_aiprod_serve_request_seconds_count", endpoint="emergency", path="template") == 1
    for deployment in ("StandardGenerator", "EmergencyGenerator"):  # the unknown A/B version failed to load
        assert delta(after, "ray_aiprod_model_load_failures_total", deployment=deployment, pointer="other") >= 1
        assert total(after, "ray_aiprod_model_serving", deployment=deployment, arm="a", version=V1) == 1


# -------------------------------------------------- real Ray: a tiny training run, scraped


def test_a_tiny_training_run_exports_its_progress_nan_skips_and_anomalies(
        ray_cluster, ray_metrics_url, tmp_path, monkeypatch):
    from aiprod.data.synthetic_shards import build_synthetic_shards
    from aiprod.training.runner import RunOptions, run_curriculum

    cfg = load_config("tiny", ["curriculum.phases.0.steps=8", "checkpoint.every_steps=100",
                               "train.anomaly.plateau_steps=3", "train.anomaly.plateau_min_improvement=0.9"])
    phase = cfg.curriculum.phases[0]
    build_synthetic_shards(str(tmp_path / "data"), 32, size=(phase.height, phase.width), frames=phase.frames,
                           fps=phase.fps, seed=0, data=cfg.data)
    nans = cfg.train.nan_rollback_after - 1  # skipped, one short of a rollback (an engine rebuild: slow)
    monkeypatch.setenv("AIPROD_FAULT_NAN_AT_STEP", "5")
    monkeypatch.setenv("AIPROD_FAULT_NAN_COUNT", str(nans))
    seen: dict[tuple, float] = {}  # the largest value of each series while the run lives (its gauges die with it)
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                for key, value in scrape(ray_metrics_url).items():
                    seen[key] = max(seen.get(key, value), value)
            except httpx.HTTPError:
                pass
            stop.wait(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        run_curriculum(cfg, RunOptions(data=str(tmp_path / "data"), storage=str(tmp_path), run_name="mon",
                                       end_phase=0, workers=1))
        deadline = time.monotonic() + SCRAPE_TIMEOUT_S  # the last export of the finished workers
        while total(seen, "ray_aiprod_train_global_step", run="mon") < 8 and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        stop.set()
        watcher.join()
    records = [json.loads(line) for line in (tmp_path / "mon" / "metrics.jsonl").read_text().splitlines()]
    plateaus = [r for r in records if r.get("event") == "anomaly" and r["kind"] == "loss_plateau"]
    assert plateaus  # a loss cannot fall 90% in 3 steps
    run = {"run": "mon"}
    assert total(seen, "ray_aiprod_train_global_step", **run) == 8
    assert total(seen, "ray_aiprod_train_phase", **run) == 0
    assert total(seen, "ray_aiprod_train_nan_skips_total", **run) == nans
    assert total(seen, "ray_aiprod_train_anomalies_total", kind="loss_plateau", **run) == len(plateaus)
    assert total(seen, "ray_aiprod_train_checkpoints_total", why="phase_end", **run) == 1
    for name in ("loss", "samples_per_second", "checkpoint_seconds", "last_step_time_seconds", "device_memory_bytes"):
        assert total(seen, f"ray_aiprod_train_{name}", **run) > 0, name
    # 8 steps may end inside one report interval, so these gauges may only ever show the last step's value (lr 0
    # at the end of the decay, ETA 0): each is exported and holds a value the run logged
    for name, key in (("lr", "lr"), ("eta_seconds", "eta_s")):
        logged = [r[key] for r in records if key in r]
        exported = [v for (n, ls), v in seen.items() if n == f"ray_aiprod_train_{name}" and ("run", "mon") in ls]
        assert exported and logged, name
        assert all(any(math.isclose(v, x, rel_tol=1e-6, abs_tol=1e-9) for x in logged) for v in exported), name
    assert 0 <= total(seen, "ray_aiprod_train_data_wait_share", **run) <= 1
    assert total(seen, "ray_aiprod_train_step_seconds_count", **run) >= 5
