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
import json
import os
import string
import sys
import threading
import time
from typing import Any

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


def nvmlSystemGetDriverVersion() -> str | bytes:
    with _lock:
        _require_init("nvmlSystemGetDriverVersion")
        _top_error("driver_version")
        return _str(str(_spec.get("driver_version", "580.95.05")))


def nvmlDeviceGetCount() -> int:
    with _lock:
        _require_init("nvmlDeviceGetCount")
        _top_error("count")
        return len(_spec["gpus"])


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


def nvmlDeviceGetUUID(handle: c_nvmlDevice_t) -> str | bytes:
    with _lock:
        index, gpu = _device_call("nvmlDeviceGetUUID", handle, "uuid")
        return _str(str(gpu.get("uuid") or f"GPU-00000000-0000-0000-0000-{index:012d}"))


def nvmlDeviceGetName(handle: c_nvmlDevice_t) -> str | bytes:
    with _lock:
        _, gpu = _device_call("nvmlDeviceGetName", handle, "name")
        return _str(str(gpu.get("name") or "NVIDIA H100 80GB HBM3"))


def nvmlDeviceGetUtilizationRates(handle: c_nvmlDevice_t) -> c_nvmlUtilization_t:
    with _lock:
        index, gpu = _device_call("nvmlDeviceGetUtilizationRates", handle, "utilization")
        step = max(_reads[index] - 1, 0)

        def advance(key: str) -> int:
            value = int(_value(gpu, key)) + step * int(gpu.get(key + "_per_read") or 0)
            return min(max(value, 0), 100)

        return c_nvmlUtilization_t(gpu=advance("utilization_gpu"), memory=advance("utilization_memory"))


def nvmlDeviceGetMemoryInfo(handle: c_nvmlDevice_t, version: int | None = None) -> c_nvmlMemory_t:
    """Like the real driver: v1 ``used`` includes the driver-reserved memory, v2 ``used`` does not
    (nvidia-smi shows the v2 value). ``memory_used`` in the spec is the v2 value."""
    with _lock:
        _, gpu = _device_call("nvmlDeviceGetMemoryInfo", handle, "memory")
        used = int(_value(gpu, "memory_used"))
        if version is None:
            used += int(gpu.get("memory_reserved", 0))
        return c_nvmlMemory_t(total=int(_value(gpu, "memory_total")), used=used)


def nvmlDeviceGetPowerUsage(handle: c_nvmlDevice_t) -> int:
    with _lock:
        _, gpu = _device_call("nvmlDeviceGetPowerUsage", handle, "power")
        return int(_value(gpu, "power_mw"))


def nvmlDeviceGetEnforcedPowerLimit(handle: c_nvmlDevice_t) -> int:
    with _lock:
        _, gpu = _device_call("nvmlDeviceGetEnforcedPowerLimit", handle, "power_limit")
        return int(_value(gpu, "power_limit_mw"))


def nvmlDeviceGetTemperature(handle: c_nvmlDevice_t, sensor: int) -> int:
    with _lock:
        _, gpu = _device_call("nvmlDeviceGetTemperature", handle, "temperature")
        if sensor != NVML_TEMPERATURE_GPU:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return int(_value(gpu, "temperature"))


def nvmlDeviceGetClockInfo(handle: c_nvmlDevice_t, type: int) -> int:  # same parameter name as pynvml
    with _lock:
        _, gpu = _device_call("nvmlDeviceGetClockInfo", handle, "sm_clock")
        if type in (NVML_CLOCK_SM, NVML_CLOCK_GRAPHICS):
            return int(_value(gpu, "sm_clock_mhz"))
        if type == NVML_CLOCK_MEM:
            return int(_value(gpu, "mem_clock_mhz"))
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)


def nvmlDeviceGetTotalEnergyConsumption(handle: c_nvmlDevice_t) -> int:
    with _lock:
        index, gpu = _device_call("nvmlDeviceGetTotalEnergyConsumption", handle, "energy")
        step = max(_reads[index] - 1, 0)
        return int(_value(gpu, "energy_mj")) + step * int(gpu.get("energy_mj_per_read") or 0)


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
