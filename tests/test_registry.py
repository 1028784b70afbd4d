"""Model registry on a local root and on moto S3: publish / list / promote / rollback / verify."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from aiprod import manifest, storage
from aiprod.registry import (
    GateError,
    IntegrityError,
    Registry,
    RegistryError,
    VersionExistsError,
    VersionNameError,
    VersionNotFoundError,
    parse_version,
)

ROOT = Path(__file__).resolve().parents[1]
V = "pib-videogen-standard-v{}-general"
GATES = {"psnr_min": 12.0, "temporal_coherence_min": 0.5}
ALIGNED = {"alignment_colour": 0.95, "alignment_direction": 0.9}  # clears every preset's alignment gates
GOOD = {"metrics": {"psnr": 20.0, "temporal_coherence": 0.93, **ALIGNED}}
BAD = {"metrics": {"psnr": 9.5, "temporal_coherence": 0.95, **ALIGNED}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_config) -> Path:
    import torch

    from aiprod.diffusion.pipeline import VideoPipeline
    from aiprod.models import build_model

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("ckpt") / "final"
    VideoPipeline(tiny_config, build_model(tiny_config.model), version="trainer").save_pretrained(directory)
    (directory / "state.json").write_text(json.dumps({"phase": 5, "step": 12}))
    manifest.write_manifest(directory)
    return directory


@pytest.fixture
def reports(tmp_path) -> dict[str, Path]:
    paths = {}
    for name, data in (("good", GOOD), ("bad", BAD)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(data))
    return paths


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "registry")
    return request.getfixturevalue("s3_uri")


def _flip_byte(uri: str) -> None:
    data = bytearray(storage.read_bytes(uri))
    data[len(data) // 2] ^= 0xFF
    storage.write_bytes_atomic(uri, bytes(data))


def test_version_names_are_validated():
    name = parse_version("pib-videogen-emergency-v2.10.3-regional-hi")
    assert (name.model_type, name.semver, name.specialization) == ("emergency", (2, 10, 3), "regional-hi")
    assert str(name) == "pib-videogen-emergency-v2.10.3-regional-hi"
    for bad, needle in [("pib-videogen-standard-v1.0-general", "expected pib-videogen-"),
                        ("videogen-standard-v1.0.0-general", "expected pib-videogen-"),
                        ("pib-videogen-standard-v01.0.0-general", "expected"),
                        ("pib-videogen-Standard-v1.0.0-general", "expected"),
                        ("pib-videogen-turbo-v1.0.0-general", "model_type 'turbo'"),
                        ("pib-videogen-standard-v1.0.0-weird", "specialization 'weird'")]:
        with pytest.raises(VersionNameError, match=needle):
            parse_version(bad)


def test_publish_list_promote_rollback_verify(root, checkpoint, reports):
    reg = Registry(root)
    for version, report in (("1.0.0", "bad"), ("1.1.0", "good"), ("1.2.0", "good")):
        reg.publish(checkpoint, V.format(version), report=reports[report])
    with pytest.raises(VersionExistsError, match="already exists"):
        reg.publish(checkpoint, V.format("1.0.0"), report=reports["good"])
    with pytest.raises(VersionNameError):
        reg.publish(checkpoint, "my-model", report=reports["good"])

    rows = reg.list_versions()
    assert [r["version"] for r in rows] == [V.format(v) for v in ("1.0.0", "1.1.0", "1.2.0")]
    assert [r["latest"] for r in rows] == [False, False, True]
    assert not any(r["production"] for r in rows) and reg.pointer("production") is None
    assert rows[1]["metrics"] == GOOD["metrics"]
    assert all(reg.verify(r["version"]) == [] for r in rows)

    # gate refused, then passed
    with pytest.raises(GateError, match=r"psnr_min: psnr = 9.5, needs >= 12"):
        reg.promote(V.format("1.0.0"), GATES)
    assert reg.pointer("production") is None
    reg.promote(V.format("1.1.0"), GATES)
    assert reg.pointer("production") == V.format("1.1.0")
    with pytest.raises(RegistryError, match="--reason"):
        reg.promote(V.format("1.0.0"), GATES, force=True)
    event = reg.promote(V.format("1.0.0"), GATES, force=True, reason="hotfix approved by on-call")
    assert event["forced"] and reg.pointer("production") == V.format("1.0.0")

    # rollback restores the previous production version, and only as far as there is one
    assert reg.rollback()["version"] == V.format("1.1.0")
    assert reg.pointer("production") == V.format("1.1.0")
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()

    actions = [(e["action"], e["version"]) for e in reg.history()]
    assert actions == [("publish", V.format("1.0.0")), ("publish", V.format("1.1.0")),
                       ("publish", V.format("1.2.0")), ("promote", V.format("1.1.0")),
                       ("promote", V.format("1.0.0")), ("rollback", V.format("1.1.0"))]
    forced = [e for e in reg.history() if e.get("forced")]
    assert len(forced) == 1 and forced[0]["reason"] == "hotfix approved by on-call"
    assert "psnr_min" in forced[0]["gate_failures"][0]

    # resolve for serving: a local dir whose weights carry the registry version
    from aiprod.diffusion.pipeline import VideoPipeline

    local = reg.resolve("production", cache_dir=Path(checkpoint).parent / "cache")
    assert VideoPipeline.from_checkpoint(local).version == V.format("1.1.0")
    with pytest.raises(VersionNotFoundError):
        reg.resolve(V.format("9.9.9"))

    # a flipped byte fails verification, and the damaged version cannot be promoted
    _flip_byte(storage.join(reg.root, V.format("1.2.0"), "model.safetensors"))
    problems = reg.verify(V.format("1.2.0"))
    assert problems == ["model.safetensors: sha256 mismatch"]
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        reg.promote(V.format("1.2.0"), GATES)
    assert reg.pointer("production") == V.format("1.1.0")


def test_promote_without_report_is_refused(tmp_path, checkpoint):
    reg = Registry(tmp_path / "reg")
    reg.publish(checkpoint, V.format("0.1.0"))
    with pytest.raises(GateError, match="has no report.json"):
        reg.promote(V.format("0.1.0"), GATES)


def test_publish_refuses_a_corrupt_checkpoint(tmp_path, checkpoint):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    _flip_byte(str(broken / "config.yaml"))
    with pytest.raises(IntegrityError, match="config.yaml: sha256 mismatch"):
        Registry(tmp_path / "reg").publish(broken, V.format("0.1.0"))
    assert Registry(tmp_path / "reg").versions() == []


def test_publish_names_weights_that_are_not_safetensors(tmp_path, checkpoint):
    import shutil

    from aiprod.model_dir import WEIGHTS

    for blob, says in ((b"short", "too short"), (b"\x10" + b"\x00" * 7 + b"not json, just bytes", "bad header")):
        broken = tmp_path / f"broken-{len(blob)}"
        shutil.copytree(checkpoint, broken)
        (broken / WEIGHTS).write_bytes(blob)
        manifest.write_manifest(broken)  # intact as far as the manifest knows
        with pytest.raises(RegistryError, match=f"{WEIGHTS} is not a safetensors file \\({says}\\)"):
            Registry(tmp_path / "reg").publish(broken, V.format("0.1.0"))
    assert Registry(tmp_path / "reg").versions() == []


def test_concurrent_publishers_cannot_both_win(root, checkpoint, reports):
    """Eight threads publish the same version at once; the advisory existence check is disabled so
    every thread reaches the create-only commit (rename locally, conditional PUT on S3)."""
    reg = Registry(root)
    reg.store.exists = lambda name: False
    barrier, outcomes = threading.Barrier(8), []

    def publish(i: int) -> None:
        barrier.wait()
        try:
            reg.publish(checkpoint, V.format("3.0.0"), report={"metrics": {"psnr": float(i)}})
            outcomes.append(("won", i))
        except VersionExistsError:
            outcomes.append(("lost", i))

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for outcome, i in outcomes if outcome == "won"]
    assert len(outcomes) == 8 and len(winners) == 1, outcomes
    assert reg.verify(V.format("3.0.0")) == []
    assert reg.report(V.format("3.0.0"))["metrics"]["psnr"] == winners[0]
    assert [e["action"] for e in reg.history()] == ["publish"]


def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "jobs" / "registry.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def test_cli(tmp_path, checkpoint, reports):
    root = str(tmp_path / "reg")
    name = V.format("0.2.0")
    racers = [_cli("--root", root, "publish", str(checkpoint), "--version", name, "--report", str(reports["bad"]))
              for _ in range(3)]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in racers]
    assert sorted(rc for rc, _, _ in results) == [0, 1, 1], results
    assert all("already exists" in err for rc, _, err in results if rc)

    def run(*args: str) -> tuple[int, str, str]:
        proc = _cli("--root", root, *args)
        return proc.wait(timeout=120), proc.stdout.read(), proc.stderr.read()

    rc, out, _ = run("list")
    assert rc == 0 and name in out and "latest" in out
    rc, _, err = run("--set", "eval.gates.psnr_min=12.0", "promote", name)
    assert rc == 1 and "fails the release gates" in err and "psnr_min" in err
    rc, out, _ = run("promote", name)  # the tiny preset's gates: psnr_min 8
    assert rc == 0 and f"production -> {name}" in out
    rc, _, err = run("rollback")
    assert rc == 1 and "nothing to roll back" in err
    rc, out, _ = run("verify", name)
    assert rc == 0
    _flip_byte(str(Path(root) / name / "config.yaml"))
    rc, _, err = run("verify", name)
    assert rc == 1 and "config.yaml: sha256 mismatch" in err
    rc, _, err = run("publish", str(checkpoint), "--version", "pib-videogen-standard-1.0.0-general")
    assert rc == 1 and "bad version name" in err
    rc, out, _ = run("history")
    assert [json.loads(line)["action"] for line in out.splitlines()] == ["publish", "promote"]

    # promote takes the gates of the config the version was trained with, not the CLI's default preset
    from aiprod.config import load_config
    from aiprod.diffusion.pipeline import VideoPipeline
    from aiprod.models import build_model

    strict_cfg = load_config("tiny", ["eval.gates.psnr_min=12.0"])
    strict = tmp_path / "strict"
    VideoPipeline(strict_cfg, build_model(strict_cfg.model), version="trainer").save_pretrained(strict)
    strict_name = V.format("0.3.0")
    assert run("publish", str(strict), "--version", strict_name, "--report", str(reports["bad"]))[0] == 0
    rc, out, err = run("promote", strict_name)  # psnr 9.5 passes tiny's 8, not its own 12
    assert rc == 1 and "fails the release gates" in err and "psnr_min" in err
    assert "gates from the version's own config" in out and '"psnr_min": 12.0' in out
    rc, out, _ = run("--preset", "tiny", "promote", strict_name)  # an explicit config's gates win
    assert rc == 0 and f"production -> {strict_name}" in out and "gates from --preset tiny" in out


def test_a_name_ending_in_a_newline_is_refused(tmp_path, checkpoint):
    reg = Registry(tmp_path / "reg")
    for bad in (V.format("1.0.0") + "\n", V.format("1.0.0") + "\r\n", "\n" + V.format("1.0.0")):
        with pytest.raises(VersionNameError, match="bad version name"):
            parse_version(bad)
        with pytest.raises(VersionNameError):
            reg.publish(checkpoint, bad)
    assert reg.versions() == [] and reg.pointer("latest") is None


def test_rollback_and_resolve_verify_the_manifest(root, checkpoint, reports):
    reg = Registry(root)
    for version in ("1.0.0", "1.1.0"):
        reg.publish(checkpoint, V.format(version), report=reports["good"])
    reg.promote(V.format("1.0.0"), GATES)
    reg.promote(V.format("1.1.0"), GATES)
    _flip_byte(storage.join(reg.root, V.format("1.0.0"), "model.safetensors"))
    with pytest.raises(IntegrityError, match=r"1\.0\.0.*refusing to roll back.*sha256 mismatch"):
        reg.rollback()
    assert reg.pointer("production") == V.format("1.1.0")
    assert [e["action"] for e in reg.history()][-1] == "promote"
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        reg.resolve(V.format("1.0.0"), cache_dir=Path(str(checkpoint)).parent / f"cache-{os.getpid()}")


def test_cli_resolve_of_a_corrupt_version_fails(tmp_path, checkpoint):
    root = tmp_path / "reg"
    name = V.format("0.4.0")
    Registry(root).publish(checkpoint, name)
    proc = _cli("--root", str(root), "resolve", name)
    assert proc.wait(timeout=120) == 0 and proc.stdout.read().strip() == str(root / name)
    _flip_byte(str(root / name / "model.safetensors"))
    proc = _cli("--root", str(root), "resolve", name)
    rc, out, err = proc.wait(timeout=120), proc.stdout.read(), proc.stderr.read()
    assert rc == 1 and out == "" and f"{name} fails its manifest" in err and "sha256 mismatch" in err


def test_the_ab_pointer_names_an_intact_version_and_its_share_of_traffic(root, checkpoint, reports):
    reg = Registry(root)
    for version in ("1.0.0", "1.1.0"):
        reg.publish(checkpoint, V.format(version), report=reports["good"])
    assert reg.ab() is None
    for bad in (0, 0.0, -0.1, 1.5, float("nan"), float("inf"), True, "0.5"):
        with pytest.raises(RegistryError, match=r"A/B fraction must be > 0 and <= 1"):
            reg.set_ab(V.format("1.1.0"), bad)
    with pytest.raises(VersionNotFoundError, match=r"no version .*9\.9\.9"):
        reg.set_ab(V.format("9.9.9"), 0.1)
    assert reg.ab() is None

    event = reg.set_ab(V.format("1.1.0"), 0.25, reason="candidate from finetune run 7")
    assert (event["action"], event["version"], event["fraction"], event["replaced"]) == (
        "ab", V.format("1.1.0"), 0.25, None)
    pointer = reg.ab()
    assert (pointer["version"], pointer["fraction"]) == (V.format("1.1.0"), 0.25) and pointer["updated_at"]
    assert reg.set_ab(V.format("1.0.0"), 1)["replaced"] == V.format("1.1.0")
    assert reg.ab()["fraction"] == 1.0

    _flip_byte(storage.join(reg.root, V.format("1.1.0"), "model.safetensors"))
    with pytest.raises(IntegrityError, match="refusing to point A/B at it.*sha256 mismatch"):
        reg.set_ab(V.format("1.1.0"), 0.5)
    assert reg.ab()["version"] == V.format("1.0.0")

    assert reg.clear_ab(reason="candidate lost")["replaced"] == V.format("1.0.0")
    assert reg.ab() is None and reg.clear_ab() is None
    ab_events = [(e["version"], e["fraction"]) for e in reg.history() if e["action"] == "ab"]
    assert ab_events == [(V.format("1.1.0"), 0.25), (V.format("1.0.0"), 1.0), (None, 0.0)]


def test_cli_sets_shows_and_clears_the_ab_pointer(tmp_path, checkpoint):
    root = tmp_path / "reg"
    name = V.format("0.5.0")
    Registry(root).publish(checkpoint, name)

    def run(*args: str) -> tuple[int, str, str]:
        proc = _cli("--root", str(root), "ab", *args)
        return proc.wait(timeout=120), proc.stdout.read(), proc.stderr.read()

    rc, out, _ = run(name, "--fraction", "0.1", "--reason", "try it")
    assert rc == 0 and f"A/B -> {name} with 0.1 of the traffic" in out
    rc, out, _ = run()
    assert rc == 0 and json.loads(out)["version"] == name and json.loads(out)["fraction"] == 0.1
    rc, out, _ = run("--clear")
    assert rc == 0 and f"was {name}" in out and Registry(root).ab() is None
