"""A fake ``pynvml`` (nvidia-ml-py) for tests: same names, constants and error classes as the real one.

Put this directory first on the path (``PYTHONPATH=tests/fakes/pynvml_fake``) and ``import pynvml``
gets this module; in-process tests may load it by file path and call :func:`configure`.

Configuration is a JSON spec, read from the file named by ``INFERMETER_FAKE_NVML`` at import and at
every ``nvmlInit`` (unless :func:`configure` was called in-process, which then wins)::

    {
      "missing": false,                 # true: nvmlInit raises NVMLError_LibraryNotFound
      "driver_version": "580.95.05",
      "errors": {"init": "DRIVER_NOT_LOADED", "count": "UNKNOWN", "driver_version": "NOT_SUPPORTED"},
      "return_bytes": false,            # true: strings come back as bytes (old pynvml)
      "call_delay_seconds": 0,          # sleep after every NVML call, like a driver call (see the end)
      "gpus": [{
        "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-...",
        "utilization_gpu": 87, "utilization_memory": 54,        # percent
        "utilization_gpu_per_read": 0, "utilization_memory_per_read": 0,  # added per read, clamped 0..100
        "memory_total": 85520809984, "memory_used": 70000000000,  # bytes
        "power_mw": 512345, "power_limit_mw": 700000,            # milliwatts
        "temperature": 61,                                        # Celsius
        "sm_clock_mhz": 1980,                                     # MHz
        "energy_mj": 123456789, "energy_mj_per_read": 0,          # millijoules
        "processes": [{"pid": 4242, "used_memory": 69000000000}], # used_memory null -> None,
                                                                  # "not_available" -> 2**64-1
        "not_supported": ["power", "energy", "processes"],        # fields -> NVMLError_NotSupported
        "errors": {"energy": "FUNCTION_NOT_FOUND", "power": 999}, # fields -> any NVML error code
        "lost_after_reads": null,   # N: GPU_IS_LOST on every call after N full reads
        "delay_seconds": 0          # sleep in each nvmlDeviceGetHandleByIndex (one read of this GPU)
      }]
    }

Field names for ``not_supported`` / ``errors``: handle, uuid, name, utilization, memory, power,
power_limit, temperature, sm_clock, energy, processes. Error codes are ``NVML_ERROR_*`` names
without the prefix, or ints.

A "read" of a GPU is one ``nvmlDeviceGetHandleByIndex`` call for it: the counters (energy,
utilization steps) advance there, and ``lost_after_reads: N`` makes the (N+1)th handle call and
every call after it raise ``NVMLError_GpuIsLost``.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import json
import os
import string
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

# -- constants (values as in nvml.h / the real pynvml) -------------------------------------------

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_IN_USE = 19
NVML_ERROR_MEMORY = 20
NVML_ERROR_NO_DATA = 21
NVML_ERROR_VGPU_ECC_NOT_SUPPORTED = 22
NVML_ERROR_INSUFFICIENT_RESOURCES = 23
NVML_ERROR_FREQ_NOT_SUPPORTED = 24
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_DEPRECATED = 26
NVML_ERROR_NOT_READY = 27
NVML_ERROR_GPU_NOT_FOUND = 28
NVML_ERROR_INVALID_STATE = 29
NVML_ERROR_RESET_TYPE_NOT_SUPPORTED = 30
NVML_ERROR_UNKNOWN = 999

NVML_TEMPERATURE_GPU = 0
NVML_TEMPERATURE_GPU_MAX = 1

NVML_CLOCK_GRAPHICS = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_CLOCK_VIDEO = 3

NVML_VALUE_NOT_AVAILABLE_ulonglong = ctypes.c_ulonglong(-1)
NVML_VALUE_NOT_AVAILABLE_uint = ctypes.c_uint(-1)

FAKE_ENV = "INFERMETER_FAKE_NVML"
IS_FAKE = True

# -- errors (same construction as the real pynvml) -----------------------------------------------


class NVMLLibraryMismatchError(Exception):
    pass


class NVMLError(Exception):
    _valClassMapping: dict[int, type[NVMLError]] = {}  # noqa: RUF012 - mirrors pynvml
    _errcode_to_string: dict[int, str] = {  # noqa: RUF012 - mirrors pynvml
        NVML_ERROR_UNINITIALIZED: "Uninitialized",
        NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
        NVML_ERROR_NOT_SUPPORTED: "Not Supported",
        NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
        NVML_ERROR_ALREADY_INITIALIZED: "Already Initialized",
        NVML_ERROR_NOT_FOUND: "Not Found",
        NVML_ERROR_INSUFFICIENT_SIZE: "Insufficient Size",
        NVML_ERROR_INSUFFICIENT_POWER: "Insufficient External Power",
        NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
        NVML_ERROR_TIMEOUT: "Timeout",
        NVML_ERROR_IRQ_ISSUE: "Interrupt Request Issue",
        NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
        NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
        NVML_ERROR_CORRUPTED_INFOROM: "Corrupted infoROM",
        NVML_ERROR_GPU_IS_LOST: "GPU is lost",
        NVML_ERROR_RESET_REQUIRED: "GPU requires restart",
        NVML_ERROR_OPERATING_SYSTEM: "The operating system has blocked the request.",
        NVML_ERROR_LIB_RM_VERSION_MISMATCH: "RM has detected an NVML/RM version mismatch.",
        NVML_ERROR_MEMORY: "Insufficient Memory",
        NVML_ERROR_UNKNOWN: "Unknown Error",
    }
    value: int

    def __new__(cls, value: int) -> NVMLError:
        typ: type[NVMLError] = cls
        if cls is NVMLError:
            typ = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(typ)
        obj.value = value
        return obj

    def __str__(self) -> str:
        return NVMLError._errcode_to_string.get(self.value, f"NVML Error with code {self.value}")

    def __eq__(self, other: object) -> bool:
        return self.value == getattr(other, "value", None)

    __hash__ = None  # type: ignore[assignment]  # like pynvml: __eq__ without __hash__


def nvmlExceptionClass(nvmlErrorCode: int) -> type[NVMLError]:
    if nvmlErrorCode not in NVMLError._valClassMapping:
        raise ValueError(f"nvmlErrorCode {nvmlErrorCode} is not valid")
    return NVMLError._valClassMapping[nvmlErrorCode]


def nvmlErrorString(result: int) -> str:
    return str(NVMLError(result))


def _extractNVMLErrorsAsClasses() -> None:
    """NVML_ERROR_GPU_IS_LOST -> NVMLError_GpuIsLost, etc., exactly as pynvml names them."""
    this_module = sys.modules[__name__]
    for err_name in [x for x in dir(this_module) if x.startswith("NVML_ERROR_")]:
        class_name = "NVMLError_" + string.capwords(err_name.replace("NVML_ERROR_", ""), "_").replace("_", "")
        err_val = getattr(this_module, err_name)

        def gen_new(val: int) -> Any:
            def new(typ: type[NVMLError], *args: object) -> NVMLError:
                return NVMLError.__new__(typ, val)

            return new

        new_error_class = type(class_name, (NVMLError,), {"__new__": gen_new(err_val)})
        new_error_class.__module__ = __name__
        setattr(this_module, class_name, new_error_class)
        NVMLError._valClassMapping[err_val] = new_error_class


_extractNVMLErrorsAsClasses()

# Names for static readers (the classes themselves are generated above).
NVMLError_NotSupported: type[NVMLError] = NVMLError._valClassMapping[NVML_ERROR_NOT_SUPPORTED]
NVMLError_NoPermission: type[NVMLError] = NVMLError._valClassMapping[NVML_ERROR_NO_PERMISSION]
NVMLError_NotFound: type[NVMLError] = NVMLError._valClassMapping[NVML_ERROR_NOT_FOUND]
NVMLError_GpuIsLost: type[NVMLError] = NVMLError._valClassMapping[NVML_ERROR_GPU_IS_LOST]
NVMLError_LibraryNotFound: type[NVMLError] = NVMLError._valClassMapping[NVML_ERROR_LIBRARY_NOT_FOUND]
NVMLError_DriverNotLoaded: type[NVMLError] = NVMLError._valClassMapping[NVML_ERROR_DRIVER_NOT_LOADED]
NVMLError_FunctionNotFound: type[NVMLError] = NVMLError._valClassMapping[NVML_ERROR_FUNCTION_NOT_FOUND]
NVMLError_Uninitialized: type[NVMLError] = NVMLError._valClassMapping[NVML_ERROR_UNINITIALIZED]
NVMLError_InvalidArgument: type[NVMLError] = NVMLError._valClassMapping[NVML_ERROR_INVALID_ARGUMENT]
NVMLError_Unknown: type[NVMLError] = NVMLError._valClassMapping[NVML_ERROR_UNKNOWN]

# -- returned objects ----------------------------------------------------------------------------


nvmlMemory_v2 = 0x02000028  # the real module's version tag for nvmlDeviceGetMemoryInfo_v2


class c_nvmlMemory_t:
    def __init__(self, total: int, used: int) -> None:
        self.total = total
        self.used = used
        self.free = max(total - used, 0)

    def __repr__(self) -> str:
        return f"c_nvmlMemory_t(total={self.total}, free={self.free}, used={self.used})"


class c_nvmlUtilization_t:
    def __init__(self, gpu: int, memory: int) -> None:
        self.gpu = gpu
        self.memory = memory

    def __repr__(self) -> str:
        return f"c_nvmlUtilization_t(gpu={self.gpu}, memory={self.memory})"


class nvmlFriendlyObject:
    """A compute process, like pynvml's: .pid, .usedGpuMemory, .gpuInstanceId, .computeInstanceId."""

    def __init__(self, pid: int, usedGpuMemory: int | None) -> None:
        self.pid = pid
        self.usedGpuMemory = usedGpuMemory
        self.gpuInstanceId = 0xFFFFFFFF
        self.computeInstanceId = 0xFFFFFFFF

    def __repr__(self) -> str:
        return f"nvmlFriendlyObject(pid={self.pid}, usedGpuMemory={self.usedGpuMemory})"


class c_nvmlDevice_t:
    """A device handle: just the index."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"c_nvmlDevice_t({self.index})"


# -- state ---------------------------------------------------------------------------------------

_lock = threading.RLock()
_spec: dict[str, Any] = {"gpus": []}
_configured_in_process = False
_refcount = 0
_reads: list[int] = []  # handle calls per GPU
# (function, gpu index) log, for tests; bounded so that a soak of many reads does not grow it forever
_calls: collections.deque[tuple[str, int | None]] = collections.deque(maxlen=10_000)


def _code(value: object) -> int:
    if isinstance(value, int):
        return value
    name = str(value).upper()
    if not name.startswith("NVML_ERROR_"):
        name = "NVML_ERROR_" + name
    code = globals().get(name)
    if not isinstance(code, int):
        raise ValueError(f"fake pynvml: unknown NVML error {value!r}")
    return code


def _set_spec(spec: dict[str, Any]) -> None:
    global _spec, _reads
    _spec = json.loads(json.dumps(spec))  # deep copy, and proves it is JSON
    _spec.setdefault("gpus", [])
    _reads = [0] * len(_spec["gpus"])
    _calls.clear()


def _load_from_env() -> None:
    path = os.environ.get(FAKE_ENV)
    if path:
        with open(path, encoding="utf-8") as f:
            _set_spec(json.load(f))


def configure(spec: dict[str, Any]) -> None:
    """Use ``spec`` from now on (and stop re-reading INFERMETER_FAKE_NVML); resets read counters."""
    global _configured_in_process
    with _lock:
        _configured_in_process = True
        _set_spec(spec)


def reset() -> None:
    """Forget everything: no spec, not initialised, env file honoured again."""
    global _configured_in_process, _refcount
    with _lock:
        _configured_in_process = False
        _refcount = 0
        _set_spec({"gpus": []})
        _load_from_env()


def calls() -> list[tuple[str, int | None]]:
    """The NVML calls made so far: (function name, GPU index or None)."""
    with _lock:
        return list(_calls)


def clear_calls() -> None:
    """Forget the NVML calls logged so far (see :func:`calls`)."""
    with _lock:
        _calls.clear()


def reads(index: int) -> int:
    """How many reads (handle calls) GPU ``index`` has had."""
    with _lock:
        return _reads[index]


def is_initialised() -> bool:
    with _lock:
        return _refcount > 0


_load_from_env()

# -- helpers -------------------------------------------------------------------------------------


def _str(value: str) -> str | bytes:
    return value.encode() if _spec.get("return_bytes") else value


def _require_init(fn: str, index: int | None = None) -> None:
    _calls.append((fn, index))
    if _refcount <= 0:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)


def _gpu(handle: object) -> tuple[int, dict[str, Any]]:
    if not isinstance(handle, c_nvmlDevice_t) or not 0 <= handle.index < len(_spec["gpus"]):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return handle.index, _spec["gpus"][handle.index]


def _lost(index: int, gpu: dict[str, Any]) -> bool:
    after = gpu.get("lost_after_reads")
    return after is not None and _reads[index] > after


def _device_call(fn: str, handle: object, field: str) -> tuple[int, dict[str, Any]]:
    """Common checks for a per-GPU getter: init, handle, lost, injected errors."""
    index = handle.index if isinstance(handle, c_nvmlDevice_t) else None
    _require_init(fn, index)
    index, gpu = _gpu(handle)
    if _lost(index, gpu):
        raise NVMLError(NVML_ERROR_GPU_IS_LOST)
    errors = gpu.get("errors") or {}
    if field in errors:
        raise NVMLError(_code(errors[field]))
    if field in (gpu.get("not_supported") or []):
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return index, gpu


def _value(gpu: dict[str, Any], key: str) -> Any:
    value = gpu.get(key)
    if value is None:  # absent from the spec: the GPU does not report it
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return value


def _top_error(field: str) -> None:
    errors = _spec.get("errors") or {}
    if field in errors:
        raise NVMLError(_code(errors[field]))


_F = TypeVar("_F", bound=Callable[..., Any])


def _pause() -> None:
    """Sleep ``call_delay_seconds`` (spec, top level): the cost of one driver call, outside the lock."""
    delay = float(_spec.get("call_delay_seconds") or 0)
    if delay > 0:
        time.sleep(delay)


def _costed(fn: _F) -> _F:
    """Every call of ``fn`` (answered or failed) costs ``call_delay_seconds``, like a real driver call."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            _pause()

    return wrapper  # type: ignore[return-value]


# -- API -----------------------------------------------------------------------------------------


def nvmlInitWithFlags(flags: int) -> None:
    global _refcount
    with _lock:
        if not _configured_in_process:
            _load_from_env()
        _calls.append(("nvmlInit", None))
        if _spec.get("missing"):
            raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
        _top_error("init")
        _refcount += 1


def nvmlInit() -> None:
    nvmlInitWithFlags(0)


def nvmlShutdown() -> None:
    global _refcount
    with _lock:
        _require_init("nvmlShutdown")
        _refcount -= 1


@_costed
def nvmlSystemGetDriverVersion() -> str | bytes:
    with _lock:
        _require_init("nvmlSystemGetDriverVersion")
        _top_error("driver_version")
        return _str(str(_spec.get("driver_version", "580.95.05")))


@_costed
def nvmlDeviceGetCount() -> int:
    with _lock:
        _require_init("nvmlDeviceGetCount")
        _top_error("count")
        return len(_spec["gpus"])


@_costed
def nvmlDeviceGetHandleByIndex(index: int) -> c_nvmlDevice_t:
    with _lock:
        _require_init("nvmlDeviceGetHandleByIndex", index)
        if not 0 <= index < len(_spec["gpus"]):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        gpu = _spec["gpus"][index]
        _reads[index] += 1
        if _lost(index, gpu):
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        errors = gpu.get("errors") or {}
        if "handle" in errors:
            raise NVMLError(_code(errors["handle"]))
        delay = float(gpu.get("delay_seconds") or 0)
    if delay > 0:
        time.sleep(delay)
    return c_nvmlDevice_t(index)


@_costed
def nvmlDeviceGetUUID(handle: c_nvmlDevice_t) -> str | bytes:
    with _lock:
        index, gpu = _device_call("nvmlDeviceGetUUID", handle, "uuid")
        return _str(str(gpu.get("uuid") or f"GPU-00000000-0000-0000-0000-{index:012d}"))


@_costed
def nvmlDeviceGetName(handle: c_nvmlDevice_t) -> str | bytes:
    with _lock:
        _, gpu = _device_call("nvmlDeviceGetName", handle, "name")
        return _str(str(gpu.get("name") or "NVIDIA H100 80GB HBM3"))


@_costed
def nvmlDeviceGetUtilizationRates(handle: c_nvmlDevice_t) -> c_nvmlUtilization_t:
    with _lock:
        index, gpu = _device_call("nvmlDeviceGetUtilizationRates", handle, "utilization")
        step = max(_reads[index] - 1, 0)

        def advance(key: str) -> int:
            value = int(_value(gpu, key)) + step * int(gpu.get(key + "_per_read") or 0)
            return min(max(value, 0), 100)

        return c_nvmlUtilization_t(gpu=advance("utilization_gpu"), memory=advance("utilization_memory"))


@_costed
def nvmlDeviceGetMemoryInfo(handle: c_nvmlDevice_t, version: int | None = None) -> c_nvmlMemory_t:
    """Like the real driver: v1 ``used`` includes the driver-reserved memory, v2 ``used`` does not
    (nvidia-smi shows the v2 value). ``memory_used`` in the spec is the v2 value."""
    with _lock:
        _, gpu = _device_call("nvmlDeviceGetMemoryInfo", handle, "memory")
        used = int(_value(gpu, "memory_used"))
        if version is None:
            used += int(gpu.get("memory_reserved", 0))
        return c_nvmlMemory_t(total=int(_value(gpu, "memory_total")), used=used)


@_costed
def nvmlDeviceGetPowerUsage(handle: c_nvmlDevice_t) -> int:
    with _lock:
        _, gpu = _device_call("nvmlDeviceGetPowerUsage", handle, "power")
        return int(_value(gpu, "power_mw"))


@_costed
def nvmlDeviceGetEnforcedPowerLimit(handle: c_nvmlDevice_t) -> int:
    with _lock:
        _, gpu = _device_call("nvmlDeviceGetEnforcedPowerLimit", handle, "power_limit")
        return int(_value(gpu, "power_limit_mw"))


@_costed
def nvmlDeviceGetTemperature(handle: c_nvmlDevice_t, sensor: int) -> int:
    with _lock:
        _, gpu = _device_call("nvmlDeviceGetTemperature", handle, "temperature")
        if sensor != NVML_TEMPERATURE_GPU:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return int(_value(gpu, "temperature"))


@_costed
def nvmlDeviceGetClockInfo(handle: c_nvmlDevice_t, type: int) -> int:  # same parameter name as pynvml
    with _lock:
        _, gpu = _device_call("nvmlDeviceGetClockInfo", handle, "sm_clock")
        if type in (NVML_CLOCK_SM, NVML_CLOCK_GRAPHICS):
            return int(_value(gpu, "sm_clock_mhz"))
        if type == NVML_CLOCK_MEM:
            return int(_value(gpu, "mem_clock_mhz"))
        if type == NVML_CLOCK_VIDEO and "video_clock_mhz" in gpu:
            return int(gpu["video_clock_mhz"])
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)


@_costed
def nvmlDeviceGetTotalEnergyConsumption(handle: c_nvmlDevice_t) -> int:
    with _lock:
        index, gpu = _device_call("nvmlDeviceGetTotalEnergyConsumption", handle, "energy")
        step = max(_reads[index] - 1, 0)
        return int(_value(gpu, "energy_mj")) + step * int(gpu.get("energy_mj_per_read") or 0)


@_costed
def nvmlDeviceGetComputeRunningProcesses_v3(handle: c_nvmlDevice_t) -> list[nvmlFriendlyObject]:
    with _lock:
        _, gpu = _device_call("nvmlDeviceGetComputeRunningProcesses", handle, "processes")
        procs = []
        for p in gpu.get("processes") or []:
            used = p.get("used_memory")
            if used == "not_available":
                used = NVML_VALUE_NOT_AVAILABLE_ulonglong.value
            procs.append(
                nvmlFriendlyObject(pid=int(p["pid"]), usedGpuMemory=None if used is None else int(used))
            )
        return procs


def nvmlDeviceGetComputeRunningProcesses(handle: c_nvmlDevice_t) -> list[nvmlFriendlyObject]:
    # Like pynvml's @throwOnVersionMismatch: FUNCTION_NOT_FOUND becomes NVMLLibraryMismatchError.
    try:
        return nvmlDeviceGetComputeRunningProcesses_v3(handle)
    except NVMLError_FunctionNotFound as err:
        raise NVMLLibraryMismatchError(
            "Unversioned function called and the pyNVML version does not match the NVML lib version. "
            "Either use matching pyNVML and NVML lib versions or use a versioned function such as "
            "nvmlDeviceGetComputeRunningProcesses_v2"
        ) from err


# -- what other NVML clients call: nvitop 1.7.2 (nvitop-exporter), for benchmarks/bench_collect.py ----
#
# nvitop (nvitop/api/libnvml.py, device.py in the nvitop 1.7.2 wheel) reads more of pynvml than
# infermeter: the constants below at import, a few more getters, and, for the process list, memory,
# temperature and NVLink field values, the C functions themselves through ``_nvmlGetFunctionPointer``
# with ctypes structures passed by reference. The names, values and structure layouts are those of
# nvidia-ml-py 13.615.71 (pynvml.py). Optional spec keys (absent: NVMLError_NotSupported, as above):
#
#   top level: "cuda_driver_version": 13000
#   per GPU:   "encoder_utilization": 0, "decoder_utilization": 0,       # percent
#              "fan_speed": 30,                                            # percent (H100 SXM: none)
#              "pcie_tx_kib_s": 1200, "pcie_rx_kib_s": 3400,              # KiB/s
#              "video_clock_mhz": 1755, "mig_mode": 0,
#              "nvlink_links": 18, "nvlink_kib_s": 1000000,               # per link and direction
#              "performance_state": 0, "graphics_processes": [...] (like "processes"),
#              processes[i]: "sm_util", "mem_util", "enc_util", "dec_util"  (nvmlDeviceGetProcessUtilization)

NVML_FEATURE_DISABLED = 0
NVML_FEATURE_ENABLED = 1
NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1
NVML_COMPUTEMODE_DEFAULT = 0
NVML_COMPUTEMODE_EXCLUSIVE_THREAD = 1
NVML_COMPUTEMODE_PROHIBITED = 2
NVML_COMPUTEMODE_EXCLUSIVE_PROCESS = 3
NVML_VOLATILE_ECC = 0
NVML_AGGREGATE_ECC = 1
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_DRIVER_WDDM = 0
NVML_DRIVER_WDM = 1
NVML_DRIVER_MCDM = 2
NVML_PCIE_UTIL_TX_BYTES = 0
NVML_PCIE_UTIL_RX_BYTES = 1
NVML_NVLINK_MAX_LINKS = 36
NVML_FI_DEV_NVLINK_LINK_COUNT = 91
NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX = 138  # KiB, per link (scopeId)
NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX = 139
NVML_FI_DEV_NVLINK_THROUGHPUT_RAW_TX = 140
NVML_FI_DEV_NVLINK_THROUGHPUT_RAW_RX = 141
NVML_VALUE_TYPE_DOUBLE = 0
NVML_VALUE_TYPE_UNSIGNED_INT = 1
NVML_VALUE_TYPE_UNSIGNED_LONG = 2
NVML_VALUE_TYPE_UNSIGNED_LONG_LONG = 3
NVML_VALUE_TYPE_SIGNED_LONG_LONG = 4
NVML_VALUE_TYPE_SIGNED_INT = 5
NVML_VALUE_TYPE_UNSIGNED_SHORT = 6
NVML_PSTATE_0 = 0
NVML_PSTATE_UNKNOWN = 32


class _PrintableStructure(ctypes.Structure):
    """pynvml's base of its ctypes structures (nvitop subclasses it)."""

    _fmt_: dict[str, str] = {}  # noqa: RUF012 - mirrors pynvml


class c_nvmlValue_t(ctypes.Union):
    _fields_ = [
        ("dVal", ctypes.c_double),
        ("uiVal", ctypes.c_uint),
        ("ulVal", ctypes.c_ulong),
        ("ullVal", ctypes.c_ulonglong),
        ("sllVal", ctypes.c_longlong),
        ("siVal", ctypes.c_int),
        ("usVal", ctypes.c_ushort),
    ]


class c_nvmlFieldValue_t(_PrintableStructure):
    _fields_ = [
        ("fieldId", ctypes.c_uint32),
        ("scopeId", ctypes.c_uint32),
        ("timestamp", ctypes.c_int64),
        ("latencyUsec", ctypes.c_int64),
        ("valueType", ctypes.c_uint),
        ("nvmlReturn", ctypes.c_uint),
        ("value", c_nvmlValue_t),
    ]


class _StructObject:
    """What pynvml's nvmlStructToFriendlyObject returns: the structure's fields as attributes."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.__dict__.update(fields)

    def __repr__(self) -> str:
        return f"nvmlFriendlyObject({self.__dict__})"


def nvmlStructToFriendlyObject(struct: ctypes.Structure) -> _StructObject:
    values = {name: getattr(struct, name) for name, *_ in struct._fields_}
    return _StructObject({k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()})


def _byref_target(arg: object) -> Any:
    """The object behind ``ctypes.byref(obj)`` (or ``obj`` itself)."""
    return getattr(arg, "_obj", arg)


def _c_entry(fn: Callable[..., None]) -> Callable[..., int]:
    """A C entry point: NVMLError -> its return code, otherwise NVML_SUCCESS; costs one driver call."""

    @functools.wraps(fn)
    def entry(*args: Any) -> int:
        try:
            fn(*args)
        except NVMLError as err:
            return err.value
        finally:
            _pause()
        return NVML_SUCCESS

    return entry


def _process_entries(handle: object, key: str, fn: str) -> list[dict[str, Any]]:
    with _lock:
        _, gpu = _device_call(fn, handle, "processes")
        return list(gpu.get(key) or [])


def _running_processes(key: str, fn: str) -> Callable[..., None]:
    def call(handle: object, count_ref: object, array: Any) -> None:
        procs = _process_entries(handle, key, fn)
        count = _byref_target(count_ref)
        if array is None or count.value < len(procs):
            count.value = len(procs)
            if procs:
                raise NVMLError(NVML_ERROR_INSUFFICIENT_SIZE)
            return
        count.value = len(procs)
        for slot, p in zip(array, procs, strict=False):
            used = p.get("used_memory")
            slot.pid = int(p["pid"])
            slot.usedGpuMemory = (NVML_VALUE_NOT_AVAILABLE_ulonglong.value
                                  if used in (None, "not_available") else int(used))
            for name in ("gpuInstanceId", "computeInstanceId"):
                if hasattr(slot, name):
                    setattr(slot, name, 0xFFFFFFFF)

    return call


def _c_memory_info(versioned: bool) -> Callable[..., None]:
    def call(handle: object, memory_ref: object) -> None:
        with _lock:
            _, gpu = _device_call("nvmlDeviceGetMemoryInfo", handle, "memory")
            total, used = int(_value(gpu, "memory_total")), int(_value(gpu, "memory_used"))
            reserved = int(gpu.get("memory_reserved", 0))
        memory = _byref_target(memory_ref)
        memory.total = total
        if versioned:
            memory.reserved, memory.used = reserved, used
        else:
            used += reserved
            memory.used = used
        memory.free = max(total - used - (reserved if versioned else 0), 0)

    return call


def _c_temperature_v(handle: object, temperature_ref: object) -> None:
    temperature = _byref_target(temperature_ref)
    temperature.temperature = nvmlDeviceGetTemperature.__wrapped__(handle, int(temperature.sensorType))  # type: ignore[attr-defined]


def _c_temperature(handle: object, sensor: object, value_ref: object) -> None:
    _byref_target(value_ref).value = nvmlDeviceGetTemperature.__wrapped__(  # type: ignore[attr-defined]
        handle, int(getattr(sensor, "value", sensor)))


def _c_field_values(handle: object, count: object, values_ref: object) -> None:
    with _lock:
        _, gpu = _device_call("nvmlDeviceGetFieldValues", handle, "field_values")
        links = gpu.get("nvlink_links")
        rate = int(gpu.get("nvlink_kib_s") or 0)
    values = _byref_target(values_ref)
    now_us = time.time_ns() // 1000
    for i in range(int(getattr(count, "value", count))):
        field = values[i]
        field.timestamp, field.latencyUsec = now_us, 0
        if links is not None and field.fieldId == NVML_FI_DEV_NVLINK_LINK_COUNT:
            field.valueType, field.nvmlReturn = NVML_VALUE_TYPE_UNSIGNED_INT, NVML_SUCCESS
            field.value.uiVal = int(links)
        elif (links is not None and field.scopeId < int(links) and field.fieldId in (
                NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
                NVML_FI_DEV_NVLINK_THROUGHPUT_RAW_TX, NVML_FI_DEV_NVLINK_THROUGHPUT_RAW_RX)):
            field.valueType, field.nvmlReturn = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, NVML_SUCCESS
            field.value.ullVal = now_us * rate // 1_000_000  # a KiB counter advancing at ``rate``
        else:
            field.nvmlReturn = NVML_ERROR_NOT_SUPPORTED


_C_FUNCTIONS: dict[str, Callable[..., int]] = {
    name: _c_entry(fn) for name, fn in {
        "nvmlDeviceGetComputeRunningProcesses_v3": _running_processes(
            "processes", "nvmlDeviceGetComputeRunningProcesses"),
        "nvmlDeviceGetGraphicsRunningProcesses_v3": _running_processes(
            "graphics_processes", "nvmlDeviceGetGraphicsRunningProcesses"),
        "nvmlDeviceGetMPSComputeRunningProcesses_v3": _running_processes(
            "mps_processes", "nvmlDeviceGetMPSComputeRunningProcesses"),
        "nvmlDeviceGetMemoryInfo_v2": _c_memory_info(versioned=True),
        "nvmlDeviceGetMemoryInfo": _c_memory_info(versioned=False),
        "nvmlDeviceGetTemperatureV": _c_temperature_v,
        "nvmlDeviceGetTemperature": _c_temperature,
        "nvmlDeviceGetFieldValues": _c_field_values,
    }.items()
}


def _nvmlGetFunctionPointer(name: str) -> Callable[..., int]:
    """The "C function" ``name`` (a Python stand-in taking ctypes arguments); FUNCTION_NOT_FOUND otherwise."""
    with _lock:
        if _refcount <= 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
    if name not in _C_FUNCTIONS:
        raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)
    return _C_FUNCTIONS[name]


def _getter(fn: str, field: str, key: str) -> Callable[[c_nvmlDevice_t], int]:
    @_costed
    def get(handle: c_nvmlDevice_t) -> int:
        with _lock:
            _, gpu = _device_call(fn, handle, field)
            return int(_value(gpu, key))

    get.__name__ = get.__qualname__ = fn
    return get


nvmlDeviceGetFanSpeed = _getter("nvmlDeviceGetFanSpeed", "fan_speed", "fan_speed")
nvmlDeviceGetPowerManagementLimit = _getter("nvmlDeviceGetPowerManagementLimit", "power_limit", "power_limit_mw")
nvmlDeviceGetPerformanceState = _getter("nvmlDeviceGetPerformanceState", "performance_state", "performance_state")


@_costed
def nvmlSystemGetCudaDriverVersion() -> int:
    with _lock:
        _require_init("nvmlSystemGetCudaDriverVersion")
        if _spec.get("cuda_driver_version") is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return int(_spec["cuda_driver_version"])


@_costed
def nvmlDeviceGetIndex(handle: c_nvmlDevice_t) -> int:
    with _lock:
        index, _ = _device_call("nvmlDeviceGetIndex", handle, "handle")
        return index


@_costed
def nvmlDeviceGetEncoderUtilization(handle: c_nvmlDevice_t) -> list[int]:
    with _lock:
        _, gpu = _device_call("nvmlDeviceGetEncoderUtilization", handle, "encoder_utilization")
        return [int(_value(gpu, "encoder_utilization")), 167_000]  # [percent, sampling period in us]


@_costed
def nvmlDeviceGetDecoderUtilization(handle: c_nvmlDevice_t) -> list[int]:
    with _lock:
        _, gpu = _device_call("nvmlDeviceGetDecoderUtilization", handle, "decoder_utilization")
        return [int(_value(gpu, "decoder_utilization")), 167_000]


@_costed
def nvmlDeviceGetPcieThroughput(handle: c_nvmlDevice_t, counter: int) -> int:
    with _lock:
        _, gpu = _device_call("nvmlDeviceGetPcieThroughput", handle, "pcie")
        if counter not in (NVML_PCIE_UTIL_TX_BYTES, NVML_PCIE_UTIL_RX_BYTES):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return int(_value(gpu, "pcie_tx_kib_s" if counter == NVML_PCIE_UTIL_TX_BYTES else "pcie_rx_kib_s"))


@_costed
def nvmlDeviceGetMigMode(handle: c_nvmlDevice_t) -> list[int]:
    with _lock:
        _, gpu = _device_call("nvmlDeviceGetMigMode", handle, "mig_mode")
        mode = int(_value(gpu, "mig_mode"))
        return [mode, mode]  # [current, pending]


@_costed
def nvmlDeviceGetProcessUtilization(handle: c_nvmlDevice_t, timeStamp: int) -> list[_StructObject]:
    """One sample per process with "sm_util" in the spec; NOT_FOUND when there is none (as NVML)."""
    with _lock:
        _, gpu = _device_call("nvmlDeviceGetProcessUtilization", handle, "process_utilization")
        now_us = time.time_ns() // 1000
        samples = [
            _StructObject({"pid": int(p["pid"]), "timeStamp": now_us, "smUtil": int(p["sm_util"]),
                           "memUtil": int(p.get("mem_util", 0)), "encUtil": int(p.get("enc_util", 0)),
                           "decUtil": int(p.get("dec_util", 0))})
            for p in gpu.get("processes") or [] if "sm_util" in p
        ]
        if not samples:
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return samples
