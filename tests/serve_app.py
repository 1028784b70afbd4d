"""What the Serve tests share: a real registry with two tiny untrained versions, the app deployed
from serve/config.yaml on a free port (`deployed_app`), an HTTP client for it (`App`), and MP4 decoding."""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

import av
import httpx
import numpy as np
import yaml

from aiprod.config import load_config
from tests.conftest import ROOT, free_port

KEY_ENV, KEY = "AIPROD_TEST_API_KEY", "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
V1 = "pib-videogen-standard-v1.0.0-general"
V2 = "pib-videogen-standard-v1.1.0-general"
OVERRIDES = [
    f"serve.api_key_env={KEY_ENV}",
    "serve.batch_wait_s=1.0",  # two concurrent requests surely meet in one batch
    "serve.emergency_reserve_s=3",
    "serve.standard.max_ongoing_requests=2",
    "serve.standard.max_queued_requests=2",
    "serve.standard.autoscaling.max_replicas=1",
    "serve.emergency.max_ongoing_requests=1",
    "serve.emergency.max_queued_requests=1",
    "serve.emergency.autoscaling.max_replicas=1",
    "serve.emergency.autoscaling.target_ongoing_requests=1",
    "serve.ingress.autoscaling.max_replicas=1",
    "serve.standard.num_cpus=0.25",
    "serve.emergency.num_cpus=0.25",
    "serve.ingress.num_cpus=0.25",
    "serve.follow_registry_s=0.5",
    "serve.disclosure_label=true",
]
TINY = load_config("tiny", OVERRIDES)


def make_registry(root: Path) -> None:
    from aiprod.diffusion.pipeline import VideoPipeline
    from aiprod.models import build_model
    from aiprod.registry import Registry

    cfg = load_config("tiny")
    registry = Registry(str(root))
    for seed, version in ((0, V1), (1, V2)):
        import torch

        torch.manual_seed(seed)
        ckpt = root.parent / f"ckpt-{seed}"
        VideoPipeline(cfg, build_model(cfg.model), version=version).save_pretrained(ckpt)
        registry.publish(ckpt, version)
    registry.promote(V1, gates={}, force=True, reason="test fixture")


def publish_adapter(root: Path, base: str, version: str, seed: int = 1) -> None:
    """Publish a LoRA adapter on `base` as registry entry `version`; its lora_B tensors are random
    (a fresh adapter's are zero), so that it changes what the model generates."""
    import torch

    from aiprod import adapter_dir
    from aiprod.models import build_model
    from aiprod.models.adapters import AdapterSpec, adapter_state, add_adapters
    from aiprod.registry import Registry

    cfg = load_config("tiny")
    spec = AdapterSpec(rank=4)
    model = add_adapters(build_model(cfg.model), spec, seed=seed)
    noise = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=noise) * 0.5 if "lora_B" in k else v
             for k, v in adapter_state(model).items()}
    registry = Registry(str(root))
    reference = adapter_dir.base_reference(registry.store.entry_uri(base))
    directory = root.parent / f"adapter-{version}"
    adapter_dir.save(directory, state, spec.to_dict(), reference, cfg, version)
    registry.publish(directory, version)


class App:
    def __init__(self, port: int, registry_root: Path):
        self.port = port
        self.registry_root = registry_root
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=120)

    def deploy(self, model: str = "production", fault: dict | None = None, ab: dict | None = None,
               wait: bool = True) -> None:
        """Deploy serve/config.yaml with test settings; with `wait`, until both generators apply it."""
        from ray.serve.context import _get_global_client
        from ray.serve.schema import ServeDeploySchema

        conf = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
        conf["http_options"] = {"host": "127.0.0.1", "port": self.port}
        app = conf["applications"][0]
        app["runtime_env"] = {"env_vars": {"PYTHONPATH": str(ROOT), KEY_ENV: KEY}}
        app["args"].update(registry_root=str(self.registry_root), overrides=OVERRIDES)
        for deployment in app["deployments"]:
            deployment["user_config"] = {"model": model, "ab": ab, "fault": fault or {}}
        _get_global_client().deploy_apps(ServeDeploySchema.model_validate(conf), _blocking=True)
        if wait:
            self.wait_applied(model, fault, ab)

    def wait_applied(self, model: str, fault: dict | None = None, ab: dict | None = None,
                     version: str | None = None) -> None:
        """Poll /v1/models until both generators serve `model` (at `version`, if given) with `fault` and `ab`."""
        expected_fault = {**TINY.serve.fault.model_dump(), **(fault or {})}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                info = self.http.get("/v1/models", headers=AUTH).json()
                if all(
                    (info[name].get("a") or {}).get("spec") == model and info[name]["fault"] == expected_fault
                    and version in (None, info[name]["a"]["version"])
                    and ((info[name].get("b") or {}).get("spec") == (ab or {}).get("version"))
                    for name in ("standard", "emergency")
                ):
                    return
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.3)
        raise TimeoutError(f"model {model} {version or ''}, fault {fault}, ab {ab} not applied within 120 s")

    def video(self, **body) -> httpx.Response:
        return self.http.post("/v1/videos", json={"prompt": "a red circle moving right", "steps": 1, **body},
                              headers=AUTH)

    def emergency(self, **body) -> httpx.Response:
        return self.http.post("/v1/emergency", json=body, headers=AUTH)


@contextlib.contextmanager
def deployed_app(tmp_path_factory, name: str):
    """The Serve app on a free port over a fresh registry with V1 (production) and V2; shut down after."""
    from ray import serve

    registry_root = tmp_path_factory.mktemp(name) / "registry"
    make_registry(registry_root)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = App(port, registry_root)
    try:
        app.deploy()
        yield app
    finally:
        app.http.close()
        serve.shutdown()


def c2pa_manifest(mp4: bytes) -> tuple[str, dict]:
    """(validation state, active manifest's assertions by label) as the c2pa library itself reads them."""
    import json

    import c2pa

    with c2pa.Reader("video/mp4", io.BytesIO(mp4)) as reader:
        store = json.loads(reader.json())
    manifest = store["manifests"][store["active_manifest"]]
    return store["validation_state"], {a["label"]: a["data"] for a in manifest["assertions"]}


def source_type(assertions: dict) -> str:
    return assertions["c2pa.actions.v2"]["actions"][0]["digitalSourceType"].rsplit("/", 1)[-1]


def decode(mp4: bytes) -> tuple[str, float, np.ndarray]:
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        return stream.codec_context.name, float(stream.average_rate), frames
