"""C2PA content credentials: signing, verifying (the c2pa library reads them back), tampering,
credentials from config or a development certificate, the emergency path's unsigned answer, and the
visible disclosure label. Serve's signed answers are checked in test_serve.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aiprod.config import ConfigError, ProvenanceConfig, TemplateConfig, load_config
from aiprod.data.video_encode import encode_mp4
from aiprod.provenance import Facts, Provenance, ProvenanceKeyError, load_keys, verify_bytes, verify_file
from aiprod.provenance.__main__ import main as provenance_main
from aiprod.provenance.disclosure import burn_label, label_box, label_image
from aiprod.provenance.keys import DEV_CA, DEV_CHAIN, DEV_KEY

PROMPT = "a red circle moving right"


@pytest.fixture(scope="module")
def dev_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("provenance") / "dev")


@pytest.fixture(scope="module")
def signer(dev_dir):
    return Provenance(ProvenanceConfig(dev_dir=dev_dir))


@pytest.fixture(scope="module")
def video() -> bytes:
    rng = np.random.default_rng(0)
    return encode_mp4(rng.integers(0, 255, (9, 32, 48, 3), dtype=np.uint8), 8, preset="veryfast")


def flip_byte_in_the_middle(data: bytes) -> bytes:
    changed = bytearray(data)
    changed[len(changed) // 2] ^= 0x01
    return bytes(changed)


def test_a_signed_video_verifies_with_what_made_it(signer, video):
    signed = signer.sign(video, Facts("model", "standard", "hi", PROMPT, model_version="pib-videogen-standard-v1"))
    verdict = verify_bytes(signed)
    assert verdict["valid"] is True
    assert verdict["source_type"] == "trainedAlgorithmicMedia"
    assert verdict["model_version"] == "pib-videogen-standard-v1"
    assert (verdict["mode"], verdict["language"]) == ("standard", "hi")
    assert verdict["generator"].startswith("AIPROD ")
    assert verdict["created"].endswith("Z")
    assert verdict["development_certificate"] is True and "development" in verdict["signer"]
    assert len(verdict["prompt_sha256"]) == 64 and PROMPT.encode() not in signed  # a hash, not the prompt
    assert verdict["adapter"] is None and verdict["notes"] == []


def test_an_adapters_video_names_base_and_adapter_and_a_card_says_what_fell_back(signer, video):
    tuned = Facts("model", "standard", "hi", PROMPT, model_version="pib-videogen-standard-v1.2.0-general",
                  adapter="pib-videogen-standard-v1.3.0-regional-hi")
    verdict = verify_bytes(signer.sign(video, tuned))
    assert verdict["valid"] and verdict["model_version"] == "pib-videogen-standard-v1.2.0-general"
    assert verdict["adapter"] == "pib-videogen-standard-v1.3.0-regional-hi"
    card = Facts("template", "template", "ta", "flood", notes=("no ta default wording for flood; English used",))
    verdict = verify_bytes(signer.sign(video, card))
    assert verdict["language"] == "ta" and verdict["notes"] == ["no ta default wording for flood; English used"]


def test_a_template_card_is_algorithmic_media(signer, video):
    verdict = verify_bytes(signer.sign(video, Facts("template", "template", "en", "flood")))
    assert verdict["valid"] and verdict["source_type"] == "algorithmicMedia" and verdict["model_version"] is None


def test_a_flipped_byte_fails_verification(signer, video):
    signed = signer.sign(video, Facts("model", "standard", "en", PROMPT, model_version="v1"))
    verdict = verify_bytes(flip_byte_in_the_middle(signed))
    assert verdict["valid"] is False
    assert "assertion.bmffHash.mismatch" in verdict["failures"]


def test_a_video_without_a_manifest_is_not_valid(video):
    assert verify_bytes(video) == {"valid": False, "trusted": False, "error": "no C2PA manifest"}


def test_the_development_signer_is_trusted_only_with_its_own_ca(signer, video, dev_dir):
    signed = signer.sign(video, Facts("model", "standard", "en", PROMPT))
    assert verify_bytes(signed)["trusted"] is False
    assert verify_bytes(signed, f"{dev_dir}/{DEV_CA}")["trusted"] is True


def test_verify_cli_prints_json_and_fails_on_missing_or_tampered_manifests(signer, video, tmp_path, capsys):
    good, tampered, plain = tmp_path / "good.mp4", tmp_path / "tampered.mp4", tmp_path / "plain.mp4"
    good.write_bytes(signer.sign(video, Facts("model", "emergency", "ta", PROMPT, model_version="v2")))
    tampered.write_bytes(flip_byte_in_the_middle(good.read_bytes()))
    plain.write_bytes(video)
    assert provenance_main(["verify", str(good)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["valid"], printed["mode"], printed["model_version"]) == (True, "emergency", "v2")
    assert provenance_main(["verify", str(good), "--require-trusted"]) == 1  # the dev certificate is untrusted
    assert provenance_main(["verify", str(tampered)]) == 1
    assert provenance_main(["verify", str(plain)]) == 1
    assert provenance_main(["verify", str(tmp_path / "missing.mp4")]) == 2


@pytest.mark.parametrize("mode,kept", [("omit", None), ("text", PROMPT)])
def test_the_prompt_is_recorded_as_configured(dev_dir, video, mode, kept):
    signed = Provenance(ProvenanceConfig(dev_dir=dev_dir, prompt=mode)).sign(video, Facts("model", "standard", "en",
                                                                                         PROMPT))
    assert verify_bytes(signed)["prompt_sha256"] is None
    assert (PROMPT.encode() in signed) == (kept is not None)


def test_the_development_certificate_is_made_once_per_machine(dev_dir, signer):
    again = load_keys(ProvenanceConfig(dev_dir=dev_dir))
    assert again.chain_pem == signer.keys.chain_pem and again.development
    assert again.algorithm == "es256"


def test_configured_keys_come_from_files_or_environment_variables(dev_dir, video, tmp_path, monkeypatch):
    chain, key = f"{dev_dir}/{DEV_CHAIN}", f"{dev_dir}/{DEV_KEY}"
    from_files = Provenance(ProvenanceConfig(cert=chain, key=key))
    assert from_files.keys.development is False
    assert verify_bytes(from_files.sign(video, Facts("model", "standard", "en", PROMPT)))["development_certificate"] \
        is False
    monkeypatch.setenv("TEST_C2PA_CERT", open(chain).read())  # the PEM itself
    monkeypatch.setenv("TEST_C2PA_KEY", key)  # a path to it
    from_env = load_keys(ProvenanceConfig(cert="env:TEST_C2PA_CERT", key="env:TEST_C2PA_KEY"))
    assert from_env.chain_pem == from_files.keys.chain_pem and not from_env.development
    monkeypatch.delenv("TEST_C2PA_CERT")
    with pytest.raises(ProvenanceKeyError, match="provenance.cert is env:TEST_C2PA_CERT"):
        load_keys(ProvenanceConfig(cert="env:TEST_C2PA_CERT", key="env:TEST_C2PA_KEY"))
    with pytest.raises(ProvenanceKeyError, match="provenance.key"):
        load_keys(ProvenanceConfig(cert=chain, key=chain))  # a certificate is not a key
    other = load_keys(ProvenanceConfig(dev_dir=str(tmp_path / "other-machine")))
    (tmp_path / "other-key.pem").write_bytes(other.key_pem)
    with pytest.raises(ProvenanceKeyError, match="does not belong to the first certificate"):
        load_keys(ProvenanceConfig(cert=chain, key=str(tmp_path / "other-key.pem")))


def test_the_cluster_preset_requires_a_configured_certificate(monkeypatch):
    cfg = load_config("cluster")
    assert cfg.provenance.allow_dev_cert is False and cfg.serve.disclosure_label is True
    monkeypatch.delenv("AIPROD_C2PA_CERT", raising=False)
    with pytest.raises(ProvenanceKeyError, match="AIPROD_C2PA_CERT"):
        load_keys(cfg.provenance)
    with pytest.raises(ConfigError, match="provenance: allow_dev_cert is false"):
        load_config("cluster", ["provenance.cert=null", "provenance.key=null"])


def test_an_alert_that_cannot_be_signed_is_answered_unsigned_and_counted(dev_dir):
    signer = Provenance(ProvenanceConfig(dev_dir=dev_dir))
    not_an_mp4 = b"\x00" * 64
    mp4, signed = signer.sign_alert(not_an_mp4, Facts("template", "template", "en", "flood"))
    assert (mp4, signed) == (not_an_mp4, False)
    assert signer.info()["unsigned"] == 1 and signer.info()["signed"] == 0


def test_an_alert_waits_for_the_signer_only_until_its_deadline_then_goes_unsigned(dev_dir, video):
    """100 alerts at once queue for the one native signer: one whose time runs out while another signs
    is answered unsigned at once instead of late (the ingress signs by half its alert margin)."""
    import threading
    import time

    signer = Provenance(ProvenanceConfig(dev_dir=dev_dir))
    facts = Facts("template", "template", "en", "flood")
    assert signer.sign_alert(video, facts, by=time.time() + 5)[1] is True  # a free signer signs
    with signer._lock:  # another alert is being signed
        started = time.monotonic()
        result = {}
        worker = threading.Thread(target=lambda: result.update(out=signer.sign_alert(video, facts, time.time() + 0.2)))
        worker.start()
        worker.join(5)
        waited = time.monotonic() - started
    assert result["out"] == (video, False) and 0.15 < waited < 2
    assert signer.info()["unsigned"] == 1


def test_the_cli_alert_is_signed_as_a_template_card(tmp_path, monkeypatch, dev_dir):
    from aiprod.emergency.render import main as render_main

    monkeypatch.setenv("HOME", str(tmp_path))  # the CLI's development certificate: made under ~/.aiprod
    out = tmp_path / "alert.mp4"
    assert render_main(["flood", "--language", "hi", "--seconds", "5", "--out", str(out)]) == 0
    verdict = verify_file(out)
    assert verdict["valid"] and verdict["source_type"] == "algorithmicMedia" and verdict["language"] == "hi"
    assert (tmp_path / ".aiprod" / "provenance" / DEV_KEY).exists()


# ----------------------------------------------------------------------------- disclosure


def test_the_label_is_burnt_into_the_bottom_right_corner_only():
    frames = np.full((3, 144, 256, 3), 128, dtype=np.uint8)
    labelled = burn_label(frames, "en")
    x0, y0, x1, y1 = label_box(frames.shape, "en", TemplateConfig())
    assert x0 > 256 // 2 and y0 > 144 // 2 and x1 <= 256 and y1 <= 144
    inside = labelled[:, y0:y1, x0:x1]
    assert (inside == 0).mean() > 0.3 and (inside == 255).any()  # white text on a black box
    outside = labelled.copy()
    outside[:, y0:y1, x0:x1] = 128
    assert (outside == 128).all()
    assert (frames == 128).all()  # the input is left as it was


def test_the_label_is_in_the_requests_language_and_fits_narrow_frames():
    english, hindi = label_image("en", 256, 144, TemplateConfig()), label_image("hi", 256, 144, TemplateConfig())
    assert english.shape != hindi.shape or (english != hindi).any()
    narrow = burn_label(np.zeros((1, 32, 48, 3), dtype=np.uint8), "ta")
    assert narrow.shape == (1, 32, 48, 3) and (narrow > 0).any()  # some text, however small
