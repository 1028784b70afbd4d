import subprocess
import sys

import pytest

from aiprod import storage
from aiprod.config import ConfigError, available_presets, load_config, load_overrides_file


@pytest.mark.parametrize("preset", ["tiny", "gtx1070", "cluster"])
def test_presets_load_and_validate(preset):
    cfg = load_config(preset)
    assert cfg.preset == preset
    assert len(cfg.curriculum.phases) >= 5
    assert [p.component for p in cfg.curriculum.phases][-5:] == ["denoiser"] * 5
    assert set(available_presets()) >= {"tiny", "gtx1070", "cluster"}


def test_gtx1070_is_the_seed_curriculum():
    cfg = load_config("gtx1070")
    phases = cfg.curriculum.phases
    assert [p.epochs for p in phases] == [20, 25, 30, 20, 15]
    assert [p.lr for p in phases] == [1e-4, 5e-5, 2e-5, 1e-5, 5e-6]
    assert [p.batch_size for p in phases] == [4, 4, 2, 2, 2]
    assert all(p.warmup_fraction == 0.1 and p.exit == "epochs" for p in phases)
    t = cfg.train
    assert (t.workers, t.precision, t.zero_stage, t.offload_optimizer, t.grad_clip) == (1, "fp32", 2, True, 1.0)
    assert t.activation_checkpointing and cfg.model.denoiser.activation_checkpointing
    d = cfg.model.denoiser
    assert (d.transformer_blocks, d.cnn_blocks, d.width) == (30, 18, 768)


def test_cluster_has_three_vae_phases_first():
    cfg = load_config("cluster")
    vae = cfg.curriculum.phases[:3]
    assert [p.component for p in vae] == ["vae"] * 3
    assert [(p.height, p.batch_size, p.lr, p.steps) for p in vae] == [
        (256, 16, 1e-4, 50_000), (512, 8, 5e-5, 100_000), (1024, 4, 2e-5, 150_000)]
    assert [p.warmup_steps for p in vae] == [1000, 500, 500]
    assert cfg.train.precision == "bf16"


def test_overrides_of_nested_list_items():
    cfg = load_config("tiny", ["curriculum.phases.2.lr=3e-5", "train.precision=bf16",
                               "curriculum.phases.1.levels=[1, 2]", "model.denoiser.patch_size.0=2"])
    assert cfg.curriculum.phases[2].lr == 3e-5
    assert cfg.train.precision == "bf16"
    assert cfg.curriculum.phases[1].levels == [1, 2]
    assert cfg.model.denoiser.patch_size == [2, 2, 2]


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["curriculum.phases.1.lr=-1"], "curriculum.phases.1.lr"),
        (["train.precison=bf16"], "did you mean 'train.precision'"),
        (["model.vae.latent_channel=3"], "did you mean 'model.vae.latent_channels'"),
        (["train.zero_stage=abc"], "train.zero_stage"),
        (["train.workers=x"], "train.workers"),
        (["diffusion.noise_lambda=1.5"], "diffusion.noise_lambda"),
        (["curriculum.phases.9.lr=1"], "curriculum.phases.9"),
        (["curriculum.phases.0.exit=plateau", "curriculum.phases.0.steps=null"], "curriculum.phases.0"),
        (["train.grad_clip"], "key.path=value"),
    ],
)
def test_errors_name_the_key_path(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config("tiny", overrides)
    assert expected in str(info.value)
    assert str(info.value).startswith("config:")


def test_bad_yaml_file_and_missing_preset(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {precision: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no preset named 'tny'.*did you mean 'tiny'"):
        load_config("tny")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_file_can_extend_a_preset_and_overrides_file(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("base: tiny\ntrain: {precision: bf16}\n")
    cfg = load_config(f)
    assert cfg.train.precision == "bf16" and cfg.curriculum.phases[0].component == "vae"
    best = tmp_path / "best.yaml"
    best.write_text("diffusion.noise_lambda: 0.75\ncurriculum.phases.1.lr: 0.0004\n")
    cfg = load_config("tiny", load_overrides_file(best))
    assert cfg.diffusion.noise_lambda == 0.75 and cfg.curriculum.phases[1].lr == 4e-4


def test_config_hash_is_stable_and_changes_with_any_value():
    a, b = load_config("tiny"), load_config("tiny")
    assert a.hash() == b.hash()
    assert load_config("tiny", ["curriculum.phases.3.lr=0.00051"]).hash() != a.hash()
    assert load_config("tiny", ["train.seed=1"]).hash() != a.hash()


def test_cli_prints_yaml_and_fails_on_bad_override():
    ok = subprocess.run([sys.executable, "-m", "aiprod.config", "--preset", "gtx1070"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "simple_objects" in ok.stdout and "zero_stage: 2" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "aiprod.config", "--preset", "gtx1070",
                          "curriculum.phases.1.lr=-1"], capture_output=True, text=True)
    assert bad.returncode != 0 and "curriculum.phases.1.lr" in bad.stderr
    schema = subprocess.run([sys.executable, "-m", "aiprod.config", "--schema"],
                            capture_output=True, text=True)
    assert schema.returncode == 0 and '"noise_lambda"' in schema.stdout


def test_storage_round_trips_bytes_local_and_s3(tmp_path, s3_uri):
    for base in (str(tmp_path / "store"), s3_uri):
        uri = storage.join(base, "a/b/blob.bin")
        payload = bytes(range(256)) * 1000
        storage.write_bytes_atomic(uri, payload)
        assert storage.exists(uri)
        assert storage.read_bytes(uri) == payload
        assert storage.list_files(storage.join(base, "a"), recursive=True) == [uri]
        storage.delete(storage.join(base, "a"))
        assert not storage.exists(uri)


def test_s3_fixture_is_reachable_from_boto3(s3_uri):
    import boto3

    bucket, key = s3_uri[5:].split("/", 1)
    boto3.client("s3").put_object(Bucket=bucket, Key=f"{key}/x.txt", Body=b"hello")
    assert storage.read_bytes(f"{s3_uri}/x.txt") == b"hello"
