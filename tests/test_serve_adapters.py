"""Serve's adapters and registry pointers, without Serve: the LRU of loaded adapters, which registry
entry a request's adapter names, a replica's arm b following the A/B pointer, and a pointer refresh
never replacing a deploy on its way. (On the real Serve app: tests/test_serve.py.)"""

from __future__ import annotations

import threading
import time

import pytest

from aiprod.config import load_config
from aiprod.serving import ModelHost
from aiprod.serving.adapters import AdapterError, AdapterHost, AdapterUnavailable, LRUCache, resolve_adapter
from aiprod.serving.model_host import CURRENT, Served, pointer_target
from tests.serve_app import V1, V2, make_registry, publish_adapter

HI = "pib-videogen-standard-v{}-regional-hi"


@pytest.fixture(scope="module")
def registry_root(tmp_path_factory):
    """V1 (production) and V2, and regional-hi adapters: 1.0.0 and 1.1.0 on V1, 1.2.0 on V2."""
    root = tmp_path_factory.mktemp("adapters") / "registry"
    make_registry(root)
    for version, base in (("1.0.0", V1), ("1.1.0", V1), ("1.2.0", V2)):
        publish_adapter(root, base, HI.format(version))
    return root


def test_the_adapter_cache_evicts_the_least_recently_used():
    loaded = []
    cache = LRUCache(2, lambda key: loaded.append(key) or key.upper())
    assert [cache.get(k) for k in ("a", "b", "a", "c")] == ["A", "B", "A", "C"]
    assert cache.keys() == ["a", "c"] and cache.evictions == 1  # b was the least recently used
    assert cache.get("b") == "B" and cache.keys() == ["c", "b"]  # loaded again, a evicted
    assert loaded == ["a", "b", "c", "b"]


def test_an_adapter_is_loaded_once_however_many_requests_wait_for_it():
    loads, gate = [], threading.Event()

    def slow_load(key: str) -> str:
        loads.append(key)
        gate.wait(10)
        return key

    cache = LRUCache(3, slow_load)
    threads = [threading.Thread(target=cache.get, args=("x",)) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join()
    assert loads == ["x"] and cache.keys() == ["x"]


def test_an_adapter_name_resolves_to_the_newest_adapter_on_the_serving_base(registry_root):
    cfg = load_config("tiny", [f"registry.root={registry_root}"])
    assert resolve_adapter("regional-hi", V1, cfg) == HI.format("1.1.0")  # 1.2.0 is newer, but on V2
    assert resolve_adapter("regional-hi", V2, cfg) == HI.format("1.2.0")
    assert resolve_adapter(HI.format("1.0.0"), V1, cfg) == HI.format("1.0.0")
    with pytest.raises(AdapterError, match=rf"'{HI.format('1.2.0')}': none for {V1}.*is for {V2}"):
        resolve_adapter(HI.format("1.2.0"), V1, cfg)
    with pytest.raises(AdapterError, match="'regional-bn': no version .* has the specialization 'regional-bn'"):
        resolve_adapter("regional-bn", V1, cfg)
    with pytest.raises(AdapterError, match=f"{V2} is a full model, not an adapter"):
        resolve_adapter(V2, V1, cfg)
    with pytest.raises(AdapterError, match="no such version"):
        resolve_adapter(HI.format("9.0.0"), V1, cfg)


def test_a_replica_loads_an_adapter_once_and_remembers_what_a_name_means(registry_root):
    cfg = load_config("tiny", [f"registry.root={registry_root}", "serve.follow_registry_s=0"])
    asked, loaded = [], []

    def resolver(name, base, cfg):
        asked.append(name)
        return resolve_adapter(name, base, cfg)

    adapters = AdapterHost(cfg, loader=lambda version, cfg, device: loaded.append(version) or
                           Served(None, version, version, version), resolver=resolver)
    base = Served(None, V1, "production", "dir")
    for _ in range(2):
        assert adapters.served("regional-hi", base).version == HI.format("1.1.0")
        with pytest.raises(AdapterError, match="regional-bn"):
            adapters.served("regional-bn", base)
    assert asked == ["regional-hi", "regional-bn"] and loaded == [HI.format("1.1.0")]
    assert adapters.info()["cached"] == [HI.format("1.1.0")]


def test_an_adapter_that_fails_to_load_is_backed_off_from_not_reloaded_per_request(registry_root, monkeypatch):
    cfg = load_config("tiny", [f"registry.root={registry_root}", "serve.load_retry_s=10",
                               "serve.load_retry_max_s=15"])
    tries = []

    def broken(version, cfg, device):
        tries.append(version)
        if len(tries) < 3:
            raise OSError("the adapter's safetensors is truncated")
        return Served(None, version, version, version)

    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    adapters = AdapterHost(cfg, loader=broken)
    base = Served(None, V1, "production", "dir")
    for _ in range(3):  # one load, then refusals until the retry time: not a load per request
        with pytest.raises(AdapterUnavailable, match=r"'pib-.*regional-hi' failed to load \(OSError: the adapter's "
                           r"safetensors is truncated\); this replica tries it again in 10s") as refused:
            adapters.served("regional-hi", base)
    assert tries == [HI.format("1.1.0")] and refused.value.retry_in_s == 10
    assert adapters.info()["load_failures"][HI.format("1.1.0")]["attempts"] == 1
    clock[0] += 10
    with pytest.raises(AdapterUnavailable, match="again in 15s"):  # 10 s doubled, capped at 15
        adapters.served("regional-hi", base)
    clock[0] += 15
    assert adapters.served("regional-hi", base).version == HI.format("1.1.0") and len(tries) == 3
    assert adapters.info()["load_failures"] == {}


def test_arm_b_follows_the_registry_ab_pointer(registry_root):
    from aiprod.registry import Registry

    cfg = load_config("tiny", [f"registry.root={registry_root}"])
    registry, loads = Registry(str(registry_root)), []

    def loader(spec: str, cfg, device: str) -> Served:  # what load_served records, without a model
        target = pointer_target(spec, cfg)
        loads.append(target or spec)
        return Served(None, target or spec, spec, "dir", target)

    host = ModelHost(cfg, loader=loader)
    host.apply({"model": V1, "ab": {"version": "registry"}})
    assert host.b is None and host.fraction == 0 and not host.pointers_moved()
    try:
        registry.set_ab(V2, 1.0)
        assert host.pointers_moved()
        host.apply(CURRENT)
        assert (host.pick(0.99)[0], host.b.version, host.b.spec, host.fraction) == ("b", V2, "registry", 1.0)
        assert not host.pointers_moved()
        registry.set_ab(V2, 0.25)  # the same candidate with a smaller share: no load
        assert host.pointers_moved()
        host.apply(CURRENT)
        assert host.fraction == 0.25 and host.pick(0.5)[0] == "a" and loads == [V1, V2]
    finally:
        registry.clear_ab()
    assert host.pointers_moved()
    host.apply(CURRENT)
    assert host.b is None and host.pick(0.0)[0] == "a" and not host.pointers_moved()


def test_registry_refresh_never_replaces_a_config_on_its_way():
    loading = threading.Event()

    def loader(spec: str, cfg, device: str) -> Served:
        loading.wait(30)
        return Served(None, spec, spec, spec)

    host = ModelHost(load_config("tiny"), loader=loader)
    loading.set()
    host.apply({"model": "ckpt-a"})
    loading.clear()  # loads block from here on
    host.apply_in_background({"model": "ckpt-b"})
    host.apply_in_background({"model": "ckpt-c"})  # a deploy while ckpt-b loads: the latest wins
    host.apply_in_background(CURRENT)  # a registry refresh meanwhile must not replace it
    loading.set()
    deadline = time.monotonic() + 30
    while host.pending and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not host.pending and host.a.spec == "ckpt-c" and host.user.model == "ckpt-c"
