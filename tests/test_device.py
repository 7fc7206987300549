import headstart.device as device


def test_no_bf16_flags_means_fp32(monkeypatch):
    device.cpu_has_fast_bf16.cache_clear()
    monkeypatch.delenv("HEADSTART_CPU_BF16", raising=False)
    monkeypatch.setattr(device, "_cpuinfo", lambda: ("Some CPU", {"avx2", "fma"}))
    assert device.cpu_has_fast_bf16() is False
    assert device.resolve_precision("auto", "cpu") == "32-true"
    device.cpu_has_fast_bf16.cache_clear()


def test_flags_are_confirmed_by_a_cached_measurement(monkeypatch, tmp_path):
    device.cpu_has_fast_bf16.cache_clear()
    monkeypatch.delenv("HEADSTART_CPU_BF16", raising=False)
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path))
    monkeypatch.setattr(device, "_cpuinfo", lambda: ("Fast CPU", {"avx512_bf16"}))
    calls = []
    monkeypatch.setattr(device, "_measure_bf16_speedup", lambda: calls.append(1) or 0.5)
    assert device.cpu_has_fast_bf16() is False  # the flags promise bf16, the measurement says it is slower
    device.cpu_has_fast_bf16.cache_clear()
    monkeypatch.setattr(device, "_measure_bf16_speedup", lambda: calls.append(1) or 3.0)
    assert device.cpu_has_fast_bf16() is False  # cached: not measured again
    assert calls == [1, 1, 1] and (tmp_path / "bf16-speed.json").is_file()  # slower 3 times before it is believed
    device.cpu_has_fast_bf16.cache_clear()


def test_one_slow_probe_under_load_does_not_decide(monkeypatch, tmp_path):
    """A probe that ran while another process held the cores can measure bf16 slower on a CPU where it is 5x
    faster; the best of up to three decides, and the first convincing one ends the probing."""
    device.cpu_has_fast_bf16.cache_clear()
    monkeypatch.delenv("HEADSTART_CPU_BF16", raising=False)
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path))
    monkeypatch.setattr(device, "_cpuinfo", lambda: ("Busy CPU", {"avx512_bf16"}))
    speeds = iter([0.93, 5.5, 6.0])
    calls = []
    monkeypatch.setattr(device, "_measure_bf16_speedup", lambda: calls.append(1) or next(speeds))
    assert device.cpu_has_fast_bf16() is True and calls == [1, 1]
    device.cpu_has_fast_bf16.cache_clear()


def test_override(monkeypatch):
    device.cpu_has_fast_bf16.cache_clear()
    monkeypatch.setenv("HEADSTART_CPU_BF16", "1")
    assert device.resolve_precision("auto", "cpu") == "bf16-mixed"
    assert device.resolve_precision("32", "cpu") == "32-true"
    device.cpu_has_fast_bf16.cache_clear()


def test_frozen_features_stay_fp32_unless_less_is_asked_for():
    """auto's bf16 is for training; frozen features are extracted in fp32, as load() and exports predict."""
    assert device.features_precision("auto", "bf16-mixed") == "32-true"
    assert device.features_precision("auto", "16-mixed") == "32-true"
    assert device.features_precision("auto", "32-true") == "32-true"
    assert device.features_precision("bf16-mixed", "bf16-mixed") == "bf16-mixed"
    assert device.features_precision("32", "32-true") == "32-true"


def test_int8_features_only_where_the_cpu_has_int8_dot_products(monkeypatch, caplog):
    """--int8-features on a CPU with VNNI (or AMX) extracts in int8; on an AVX2-only CPU it extracts in fp32 and
    says why, once; on CUDA it never applies."""
    monkeypatch.delenv("HEADSTART_CPU_INT8", raising=False)
    monkeypatch.setattr(device, "_cpuinfo", lambda: ("Zen 4", {"avx2", "avx512_vnni", "avx512_bf16"}))
    assert device.features_precision("auto", "bf16-mixed", int8=True) == "int8"
    assert device.features_precision("auto", "bf16-mixed", int8=True, accelerator="cuda") == "32-true"
    monkeypatch.setattr(device, "_cpuinfo", lambda: ("Zen 3", {"avx2", "fma"}))
    device._warn_no_int8_dot.cache_clear()
    with caplog.at_level("WARNING", logger="headstart.device"):
        assert device.features_precision("auto", "32-true", int8=True) == "32-true"
        assert device.features_precision("auto", "32-true", int8=True) == "32-true"
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "VNNI" in caplog.records[0].message
    monkeypatch.setenv("HEADSTART_CPU_INT8", "1")
    assert device.features_precision("auto", "32-true", int8=True) == "int8"
