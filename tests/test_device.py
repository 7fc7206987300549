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
    assert calls == [1] and (tmp_path / "bf16-speed.json").is_file()
    device.cpu_has_fast_bf16.cache_clear()


def test_override(monkeypatch):
    device.cpu_has_fast_bf16.cache_clear()
    monkeypatch.setenv("HEADSTART_CPU_BF16", "1")
    assert device.resolve_precision("auto", "cpu") == "bf16-mixed"
    assert device.resolve_precision("32", "cpu") == "32-true"
    device.cpu_has_fast_bf16.cache_clear()
