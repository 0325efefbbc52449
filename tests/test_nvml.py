"""NvmlSource against the fake pynvml (tests/fakes/pynvml_fake/pynvml.py)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from exporter.samples import GpuProcess
from exporter.sources import SourceError
from exporter.sources.nvml import NvmlSource, NvmlUnavailable

REPO = Path(__file__).resolve().parents[1]
FAKES = REPO / "tests" / "fakes"
FAKE_DIR = FAKES / "pynvml_fake"
_counter = itertools.count()


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # the fake looks itself up while building its error classes
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


specs = _load(FAKES / "nvml_specs.py", "infermeter_test_nvml_specs")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A fresh copy of the fake pynvml per test (its state is module-global)."""
    monkeypatch.delenv("INFERMETER_FAKE_NVML", raising=False)
    return _load(FAKE_DIR / "pynvml.py", f"infermeter_fake_pynvml_{next(_counter)}")


@pytest.fixture
def source(fake: ModuleType) -> Iterator[NvmlSource]:
    src = NvmlSource(fake)
    yield src
    src.close()


def node(n: int, **gpu_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = specs.h100_node(n)
    for gpu in spec["gpus"]:
        gpu.update(gpu_overrides)
    return spec


# -- values and units --------------------------------------------------------------------------


def test_reads_every_gpu_in_base_units(fake: ModuleType, source: NvmlSource) -> None:
    fake.configure(specs.h100_node(3))

    reading = source.read()

    assert reading.driver_version == "580.95.05"
    assert reading.failed_gpus == ()
    assert [g.index for g in reading.gpus] == [0, 1, 2]
    g0, g1, g2 = reading.gpus
    assert g0.uuid == "GPU-00000000-5b1c-4e2a-9f3d-0c1e2d3f4a5b"
    assert g0.name == "NVIDIA H100 80GB HBM3"
    assert g0.utilization_ratio == 0.87
    assert g0.memory_bandwidth_utilization_ratio == 0.54
    assert g0.memory_total_bytes == 85_520_809_984
    assert g0.memory_used_bytes == 70_000_000_000
    assert g0.power_watts == 512.345
    assert g0.power_limit_watts == 700.0
    assert g0.temperature_celsius == 61.0
    assert g0.sm_clock_hertz == 1_980_000_000.0
    assert g0.energy_joules == 123_456.789
    assert g0.processes == (GpuProcess(pid=4242, used_memory_bytes=69_000_000_000.0),)
    # Per-GPU values are not mixed up between GPUs.
    assert g1.uuid.startswith("GPU-00000001-")
    assert g1.utilization_ratio == 0.86
    assert g1.power_watts == 513.345
    assert g2.temperature_celsius == 63.0
    assert g2.memory_used_bytes == 70_002_000_000
    assert g2.processes == (GpuProcess(pid=4244, used_memory_bytes=69_000_000_000.0),)
    assert all(isinstance(v, float) for v in (g0.memory_total_bytes, g0.sm_clock_hertz))


def test_counters_advance_per_read(fake: ModuleType, source: NvmlSource) -> None:
    fake.configure(node(2, utilization_gpu=10, utilization_gpu_per_read=50))
    first = source.read().gpus[0]
    second = source.read().gpus[0]
    third = source.read().gpus[0]
    assert first.energy_joules == 123_456.789
    assert second.energy_joules == pytest.approx(123_456.789 + 51.234)
    assert third.energy_joules == pytest.approx(123_456.789 + 2 * 51.234)
    assert (first.utilization_ratio, second.utilization_ratio, third.utilization_ratio) == (0.1, 0.6, 1.0)


def test_bytes_from_old_pynvml_are_decoded(fake: ModuleType, source: NvmlSource) -> None:
    spec = specs.h100_node(1)
    spec["return_bytes"] = True
    fake.configure(spec)
    assert fake.nvmlDeviceGetName.__name__  # sanity: the fake is in use
    reading = source.read()
    assert reading.driver_version == "580.95.05"
    assert reading.gpus[0].name == "NVIDIA H100 80GB HBM3"
    assert reading.gpus[0].uuid.startswith("GPU-00000000-")


# -- fields NVML does not provide -------------------------------------------------------------

ALL_FIELDS = [
    "utilization",
    "memory",
    "power",
    "power_limit",
    "temperature",
    "sm_clock",
    "energy",
    "processes",
]


def test_not_supported_fields_are_none_not_zero(fake: ModuleType, source: NvmlSource) -> None:
    spec = specs.h100_node(2)
    spec["gpus"][1]["not_supported"] = ALL_FIELDS
    fake.configure(spec)

    reading = source.read()

    full, bare = reading.gpus
    assert reading.failed_gpus == ()
    assert bare.index == 1 and bare.uuid.startswith("GPU-00000001-") and bare.name
    for value in (
        bare.utilization_ratio,
        bare.memory_bandwidth_utilization_ratio,
        bare.memory_used_bytes,
        bare.memory_total_bytes,
        bare.power_watts,
        bare.power_limit_watts,
        bare.temperature_celsius,
        bare.sm_clock_hertz,
        bare.energy_joules,
        bare.processes,
    ):
        assert value is None
    assert full.power_watts == 512.345 and full.processes is not None


@pytest.mark.parametrize("code", ["NO_PERMISSION", "NOT_FOUND"])
def test_permission_and_not_found_are_none(fake: ModuleType, source: NvmlSource, code: str) -> None:
    fake.configure(node(1, errors={"processes": code, "energy": code}))
    gpu = source.read().gpus[0]
    assert gpu.processes is None
    assert gpu.energy_joules is None
    assert gpu.power_watts == 512.345


def test_processes_listed_and_memory_not_available(fake: ModuleType, source: NvmlSource) -> None:
    fake.configure(
        node(
            1,
            processes=[
                {"pid": 1, "used_memory": 1024},
                {"pid": 2, "used_memory": None},
                {"pid": 3, "used_memory": "not_available"},
            ],
        )
    )
    assert source.read().gpus[0].processes == (
        GpuProcess(pid=1, used_memory_bytes=1024.0),
        GpuProcess(pid=2, used_memory_bytes=None),
        GpuProcess(pid=3, used_memory_bytes=None),
    )


def test_no_processes_is_empty_not_none(fake: ModuleType, source: NvmlSource) -> None:
    fake.configure(node(1, processes=[]))
    assert source.read().gpus[0].processes == ()


def test_unexpected_metric_error_is_none_and_warned_once(
    fake: ModuleType, source: NvmlSource, caplog: pytest.LogCaptureFixture
) -> None:
    fake.configure(node(2, errors={"power": "UNKNOWN"}))
    with caplog.at_level(logging.DEBUG, logger="exporter.sources.nvml"):
        for _ in range(3):
            reading = source.read()
    assert reading.failed_gpus == ()
    assert [g.power_watts for g in reading.gpus] == [None, None]
    assert reading.gpus[0].energy_joules is not None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "nvmlDeviceGetPowerUsage" in warnings[0].getMessage()


def test_not_supported_logged_once_at_debug(
    fake: ModuleType, source: NvmlSource, caplog: pytest.LogCaptureFixture
) -> None:
    fake.configure(node(3, not_supported=["energy"]))
    with caplog.at_level(logging.DEBUG, logger="exporter.sources.nvml"):
        source.read()
        source.read()
    energy = [r for r in caplog.records if "nvmlDeviceGetTotalEnergyConsumption" in r.getMessage()]
    assert len(energy) == 1 and energy[0].levelno == logging.DEBUG


# -- FunctionNotFound --------------------------------------------------------------------------


def test_function_not_found_is_none_and_logged_once(
    fake: ModuleType, source: NvmlSource, caplog: pytest.LogCaptureFixture
) -> None:
    fake.configure(node(2, errors={"energy": "FUNCTION_NOT_FOUND", "processes": "FUNCTION_NOT_FOUND"}))
    with caplog.at_level(logging.DEBUG, logger="exporter.sources.nvml"):
        for _ in range(3):
            reading = source.read()

    assert [g.energy_joules for g in reading.gpus] == [None, None]
    # pynvml turns FUNCTION_NOT_FOUND of the unversioned process call into NVMLLibraryMismatchError.
    assert [g.processes for g in reading.gpus] == [None, None]
    assert reading.gpus[0].power_watts == 512.345
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    energy = [m for m in warnings if "nvmlDeviceGetTotalEnergyConsumption" in m]
    procs = [m for m in warnings if "nvmlDeviceGetComputeRunningProcesses" in m]
    assert len(energy) == 1 and len(procs) == 1 and len(warnings) == 2
    assert "nvidia-ml-py" in energy[0] and "driver" in energy[0] and "580.95.05" in energy[0]


def test_function_missing_from_old_pynvml_is_none(
    fake: ModuleType, source: NvmlSource, caplog: pytest.LogCaptureFixture
) -> None:
    fake.configure(specs.h100_node(2))
    del fake.nvmlDeviceGetTotalEnergyConsumption
    with caplog.at_level(logging.WARNING, logger="exporter.sources.nvml"):
        reading = source.read()
        source.read()
    assert [g.energy_joules for g in reading.gpus] == [None, None]
    assert len(caplog.records) == 1 and "upgrade nvidia-ml-py" in caplog.records[0].getMessage()


# -- library missing ---------------------------------------------------------------------------


def test_library_missing_raises_nvml_unavailable(fake: ModuleType, source: NvmlSource) -> None:
    fake.configure(specs.missing_library())
    with pytest.raises(NvmlUnavailable) as info:
        source.read()
    message = str(info.value)
    assert isinstance(info.value, SourceError)
    assert "libnvidia-ml.so.1" in message and "NVIDIA runtime" in message
    assert "\n" not in message

    # Retried on the next read: the driver may appear later.
    fake.configure(specs.h100_node(1))
    assert len(source.read().gpus) == 1


def test_driver_not_loaded_raises_nvml_unavailable(fake: ModuleType, source: NvmlSource) -> None:
    spec = specs.h100_node(1)
    spec["errors"] = {"init": "DRIVER_NOT_LOADED"}
    fake.configure(spec)
    with pytest.raises(NvmlUnavailable, match="driver not loaded"):
        source.read()


def test_other_init_error_is_source_error(fake: ModuleType, source: NvmlSource) -> None:
    spec = specs.h100_node(1)
    spec["errors"] = {"init": "NO_PERMISSION"}
    fake.configure(spec)
    with pytest.raises(SourceError, match="nvmlInit failed") as info:
        source.read()
    assert not isinstance(info.value, NvmlUnavailable)


def test_pynvml_not_installed_raises_nvml_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    with pytest.raises(NvmlUnavailable, match="nvidia-ml-py"):
        NvmlSource().read()


# -- GPUs failing --------------------------------------------------------------------------------


def test_gpu_lost_mid_run_others_still_read(fake: ModuleType, source: NvmlSource) -> None:
    spec = specs.h100_node(3)
    spec["gpus"][1]["lost_after_reads"] = 1
    fake.configure(spec)

    first = source.read()
    assert [g.index for g in first.gpus] == [0, 1, 2] and first.failed_gpus == ()

    for _ in range(2):
        later = source.read()
        assert [g.index for g in later.gpus] == [0, 2]
        assert later.failed_gpus == (1,)
        assert later.gpus[1].uuid.startswith("GPU-00000002-")


def test_gpu_lost_on_a_metric_call_fails_the_whole_gpu(fake: ModuleType, source: NvmlSource) -> None:
    spec = specs.h100_node(2)
    spec["gpus"][0]["errors"] = {"energy": "GPU_IS_LOST"}
    fake.configure(spec)
    reading = source.read()
    assert reading.failed_gpus == (0,)
    assert [g.index for g in reading.gpus] == [1]


@pytest.mark.parametrize("field", ["handle", "uuid", "name"])
def test_unexpected_identity_error_fails_the_gpu(fake: ModuleType, source: NvmlSource, field: str) -> None:
    spec = specs.h100_node(2)
    spec["gpus"][1]["errors"] = {field: "UNKNOWN"}
    fake.configure(spec)
    reading = source.read()
    assert reading.failed_gpus == (1,)
    assert [g.index for g in reading.gpus] == [0]


def test_device_count_failure_raises_source_error(fake: ModuleType, source: NvmlSource) -> None:
    spec = specs.h100_node(2)
    spec["errors"] = {"count": "UNKNOWN"}
    fake.configure(spec)
    with pytest.raises(SourceError, match="nvmlDeviceGetCount"):
        source.read()


def test_driver_version_unsupported_is_none(fake: ModuleType, source: NvmlSource) -> None:
    spec = specs.h100_node(1)
    spec["errors"] = {"driver_version": "NOT_SUPPORTED"}
    fake.configure(spec)
    reading = source.read()
    assert reading.driver_version is None and len(reading.gpus) == 1


# -- lifecycle -----------------------------------------------------------------------------------


def test_init_once_shutdown_on_close_and_reinit(fake: ModuleType) -> None:
    fake.configure(specs.h100_node(1))
    src = NvmlSource(fake)
    src.read()
    src.read()
    assert [c for c, _ in fake.calls()].count("nvmlInit") == 1
    assert fake.is_initialised()
    src.close()
    src.close()  # idempotent
    assert not fake.is_initialised()
    src.read()
    assert fake.is_initialised()
    src.close()


def test_concurrent_first_reads_init_once(fake: ModuleType, source: NvmlSource) -> None:
    fake.configure(specs.h100_node(2))
    errors: list[BaseException] = []

    def work() -> None:
        try:
            source.read()
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [c for c, _ in fake.calls()].count("nvmlInit") == 1


def test_nvml_shut_down_behind_our_back_is_reinitialised(fake: ModuleType, source: NvmlSource) -> None:
    fake.configure(specs.h100_node(1))
    source.read()
    fake.nvmlShutdown()
    with pytest.raises(SourceError):
        source.read()
    assert len(source.read().gpus) == 1


def test_fake_error_classes_match_real_pynvml(fake: ModuleType) -> None:
    err = fake.NVMLError(fake.NVML_ERROR_GPU_IS_LOST)
    assert type(err) is fake.NVMLError_GpuIsLost and err.value == 15
    assert isinstance(fake.NVMLError_NotSupported(), fake.NVMLError)
    assert fake.NVMLError_LibraryNotFound().value == fake.NVML_ERROR_LIBRARY_NOT_FOUND
    assert fake.NVMLError_FunctionNotFound().value == 13
    assert str(fake.NVMLError(fake.NVML_ERROR_NOT_SUPPORTED)) == "Not Supported"
    real = pytest.importorskip("pynvml")
    if getattr(real, "IS_FAKE", False):  # pragma: no cover - only when run with the fake on the path
        return
    for name in dir(real):
        if name.startswith("NVML_ERROR_") or name in ("NVML_TEMPERATURE_GPU", "NVML_CLOCK_SM"):
            assert getattr(fake, name) == getattr(real, name), name
    for code, cls in real.NVMLError._valClassMapping.items():
        assert fake.NVMLError._valClassMapping[code].__name__ == cls.__name__


# -- the fake really shadows pynvml in a subprocess -------------------------------------------


def _subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(FAKE_DIR), str(REPO)])
    env.update(extra)
    return env


def test_pythonpath_shadows_real_pynvml(tmp_path: Path) -> None:
    spec_file = specs.write_spec(tmp_path / "nvml.json", specs.h100_node(2))
    script = (
        "import json, pynvml\n"
        "from exporter.sources.nvml import NvmlSource\n"
        "r = NvmlSource().read()\n"
        "print(json.dumps({'file': pynvml.__file__, 'uuids': [g.uuid for g in r.gpus],"
        " 'driver': r.driver_version}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=_subprocess_env(INFERMETER_FAKE_NVML=str(spec_file)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    result = json.loads(out.stdout)
    assert Path(result["file"]).resolve() == (FAKE_DIR / "pynvml.py").resolve()
    assert result["driver"] == "580.95.05"
    assert len(result["uuids"]) == 2


def test_pythonpath_import_prints_fake_file() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import pynvml; print(pynvml.__file__)"],
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert Path(out.stdout.strip()).resolve() == (FAKE_DIR / "pynvml.py").resolve()


def test_memory_used_excludes_the_driver_reservation_like_nvidia_smi(fake: ModuleType, source: NvmlSource) -> None:
    # Seen on a real H100 (driver 580.159.04): v1 `used` was 480 MiB above nvidia-smi's memory.used,
    # exactly memory.reserved. The v2 call reports what nvidia-smi shows.
    fake.configure(specs.h100_node(1))
    spec = specs.h100_gpu(0)
    assert source.read().gpus[0].memory_used_bytes == spec["memory_used"]


def test_memory_falls_back_to_v1_where_the_binding_has_no_v2(fake: ModuleType) -> None:
    fake.configure(specs.h100_node(1))
    del fake.nvmlMemory_v2  # an nvidia-ml-py too old for nvmlDeviceGetMemoryInfo_v2
    spec = specs.h100_gpu(0)
    with NvmlSource(fake) as old:
        assert old.read().gpus[0].memory_used_bytes == spec["memory_used"] + spec["memory_reserved"]
