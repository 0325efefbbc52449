"""The collection benchmark runs end to end (timings belong in docs/performance.md, not in assertions),
and the fake pynvml answers the peer's (nvitop's) C-level calls the way NVML does."""

from __future__ import annotations

import ctypes
import importlib.util
import re
import subprocess
import sys
from collections.abc import Iterator
from types import ModuleType

import pytest

from tests.fakes.nvml_specs import h100_bench_node
from tests.process import FAKE_PYNVML, ROOT

CONFIGURATIONS = ("1 GPU x 1 engine", "8 GPUs x 1 engine", "1 GPU x 8 engines", "8 GPUs x 8 engines")


def _row(stdout: str, label: str) -> list[str]:
    row = re.search(rf"^\| {re.escape(label)} \|(.*)\|$", stdout, re.M)
    assert row is not None, f"no table row {label!r}:\n{stdout}"
    return [cell.strip() for cell in row.group(1).split("|")]


def test_bench_collect_quick_prints_the_matrix_and_the_peer_comparison() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_collect.py"), "--quick"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    for name in CONFIGURATIONS:
        cells = _row(out, name)
        assert len(cells) == 10 and all(cells), cells  # every column filled
    # GPUs only (8 GPUs in --quick): infermeter's column is always there, the peer's unless skipped
    own, peer, ratio = _row(out, "NVML calls per cycle")
    assert int(own) > 8, own  # at least one call per GPU
    own, peer, ratio = _row(out, "samples in /metrics")
    assert int(own) > 0
    skipped = re.search(r"^Peer skipped: (.+)$", out, re.M)
    if skipped is None:
        assert int(peer) > 0 and ratio.endswith("x"), (peer, ratio)
    else:
        assert (peer, ratio) == ("-", "-") and skipped.group(1).strip()


@pytest.fixture
def fake() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("bench_fake_pynvml", FAKE_PYNVML / "pynvml.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # the fake looks itself up while building its error classes
    spec.loader.exec_module(module)
    module.configure(h100_bench_node(2, 0.0, pids=[111, 222]))
    module.nvmlInit()
    yield module
    sys.modules.pop(spec.name, None)


def test_fake_running_processes_entry_point_asks_for_room_then_fills_it(fake: ModuleType) -> None:
    class ProcessInfo(ctypes.Structure):  # nvmlProcessInfo_v2_t, which the _v3 function fills
        _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong),
                    ("gpuInstanceId", ctypes.c_uint), ("computeInstanceId", ctypes.c_uint)]

    fn = fake._nvmlGetFunctionPointer("nvmlDeviceGetComputeRunningProcesses_v3")
    handle = fake.nvmlDeviceGetHandleByIndex(1)
    count = ctypes.c_uint(0)
    assert fn(handle, ctypes.byref(count), None) == fake.NVML_ERROR_INSUFFICIENT_SIZE
    assert count.value == 1
    array = (ProcessInfo * 4)()
    count.value = 4
    assert fn(handle, ctypes.byref(count), array) == fake.NVML_SUCCESS
    assert (count.value, array[0].pid, array[0].usedGpuMemory) == (1, 222, 69_000_000_000)
    graphics = fake._nvmlGetFunctionPointer("nvmlDeviceGetGraphicsRunningProcesses_v3")
    assert graphics(handle, ctypes.byref(count), None) == fake.NVML_SUCCESS and count.value == 0


def test_fake_memory_v2_and_field_values_entry_points(fake: ModuleType) -> None:
    class MemoryV2(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint), ("total", ctypes.c_ulonglong),
                    ("reserved", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]

    handle = fake.nvmlDeviceGetHandleByIndex(0)
    memory = MemoryV2()
    assert fake._nvmlGetFunctionPointer("nvmlDeviceGetMemoryInfo_v2")(handle, ctypes.byref(memory)) == 0
    assert memory.total == memory.reserved + memory.free + memory.used and memory.used == 70_000_000_000

    values = (fake.c_nvmlFieldValue_t * 3)()
    values[0].fieldId = fake.NVML_FI_DEV_NVLINK_LINK_COUNT
    values[1].fieldId, values[1].scopeId = fake.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, 17
    values[2].fieldId, values[2].scopeId = fake.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, 18  # no such link
    entry = fake._nvmlGetFunctionPointer("nvmlDeviceGetFieldValues")
    assert entry(handle, ctypes.c_int32(3), ctypes.byref(values)) == fake.NVML_SUCCESS
    assert (values[0].nvmlReturn, values[0].value.uiVal) == (fake.NVML_SUCCESS, 18)
    assert values[1].nvmlReturn == fake.NVML_SUCCESS and values[1].value.ullVal > 0
    assert values[2].nvmlReturn == fake.NVML_ERROR_NOT_SUPPORTED
    with pytest.raises(fake.NVMLError) as err:
        fake._nvmlGetFunctionPointer("nvmlDeviceGetConfComputeMemSizeInfo")
    assert err.value.value == fake.NVML_ERROR_FUNCTION_NOT_FOUND


def test_fake_counts_every_call_of_the_peer_getters(fake: ModuleType) -> None:
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    fake.clear_calls()
    assert fake.nvmlDeviceGetEncoderUtilization(handle)[0] == 0
    assert fake.nvmlDeviceGetPcieThroughput(handle, fake.NVML_PCIE_UTIL_RX_BYTES) == 3_400
    assert fake.nvmlDeviceGetMigMode(handle) == [0, 0]
    assert [s.pid for s in fake.nvmlDeviceGetProcessUtilization(handle, 0)] == [111]
    with pytest.raises(fake.NVMLError_NotSupported):
        fake.nvmlDeviceGetFanSpeed(handle)  # an H100 SXM has no fan
    assert [name for name, _ in fake.calls()] == [
        "nvmlDeviceGetEncoderUtilization", "nvmlDeviceGetPcieThroughput", "nvmlDeviceGetMigMode",
        "nvmlDeviceGetProcessUtilization", "nvmlDeviceGetFanSpeed"]
