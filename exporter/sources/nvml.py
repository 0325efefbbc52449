"""NVML source: every GPU read once per pass through ``pynvml`` (nvidia-ml-py), in base units.

NVML functions used (pynvml names), the unit NVML returns, and the :class:`GpuSample` field:

============================================  ==================  =====================================
pynvml function                               NVML unit           sample field (base unit)
============================================  ==================  =====================================
nvmlInit / nvmlShutdown                       --                  --
nvmlSystemGetDriverVersion                    str                 NvmlReading.driver_version
nvmlDeviceGetCount                            count               --
nvmlDeviceGetHandleByIndex                    handle              --
nvmlDeviceGetUUID                             str                 uuid
nvmlDeviceGetName                             str                 name
nvmlDeviceGetUtilizationRates .gpu            percent             utilization_ratio (/100)
nvmlDeviceGetUtilizationRates .memory         percent             memory_bandwidth_utilization_ratio
nvmlDeviceGetMemoryInfo (v2) .used / .total   bytes               memory_used_bytes / memory_total_bytes
nvmlDeviceGetPowerUsage                       milliwatts          power_watts (/1000)
nvmlDeviceGetEnforcedPowerLimit               milliwatts          power_limit_watts (/1000)
nvmlDeviceGetTemperature(.._TEMPERATURE_GPU)  degrees Celsius     temperature_celsius
nvmlDeviceGetClockInfo(NVML_CLOCK_SM)         megahertz           sm_clock_hertz (*1e6)
nvmlDeviceGetTotalEnergyConsumption           millijoules         energy_joules (/1000)
nvmlDeviceGetComputeRunningProcesses          pid, bytes          processes (pid, used_memory_bytes)
============================================  ==================  =====================================

Error handling (matched on ``NVMLError.value``, the ``NVML_ERROR_*`` code, never on class names, so
the real module and the test fake behave the same):

* a metric NVML does not provide (NOT_SUPPORTED, NO_PERMISSION, NOT_FOUND, FUNCTION_NOT_FOUND, or a
  pynvml without the function) is ``None`` for that field, never 0. FUNCTION_NOT_FOUND is logged
  once per function at warning (nvidia-ml-py newer than the driver); NOT_SUPPORTED and friends once
  per function at debug; any other code once per (function, code) at warning, and the field is None;
* GPU_IS_LOST / GPU_NOT_FOUND / RESET_REQUIRED from any call, or any NVMLError from the handle and
  identity calls (handle, UUID, name), puts that GPU's index in ``failed_gpus``; the others are
  still returned;
* nvmlDeviceGetCount failing raises :class:`SourceError`; a missing library or driver at init
  raises :class:`NvmlUnavailable`. Init is retried on the next :meth:`NvmlSource.read`; the caller
  logs these, this module does not.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import threading
from types import ModuleType, TracebackType
from typing import Any

from exporter.samples import GpuProcess, GpuSample, NvmlReading
from exporter.sources import SourceError

__all__ = ["NvmlSource", "NvmlUnavailable"]

log = logging.getLogger(__name__)

# NVML_ERROR_* codes from nvml.h (ABI-stable; pynvml exposes the same values under the same names).
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_GPU_NOT_FOUND = 28

# NVML_TEMPERATURE_GPU / NVML_CLOCK_SM, used when the module lacks the constants.
_NVML_TEMPERATURE_GPU = 0
_NVML_CLOCK_SM = 1

# The GPU itself is gone: the whole GPU fails this pass.
_GPU_GONE_CODES = frozenset({NVML_ERROR_GPU_IS_LOST, NVML_ERROR_GPU_NOT_FOUND, NVML_ERROR_RESET_REQUIRED})
# The GPU (or this process) does not provide the value: the field is None.
_ABSENT_CODES = frozenset({NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_NO_PERMISSION, NVML_ERROR_NOT_FOUND})

# What NVML puts in usedGpuMemory when it has no value (unsigned long long -1); pynvml >= 11 maps it
# to None itself, older ones pass it through.
_VALUE_NOT_AVAILABLE_ULL = 2**64 - 1

_LIBRARY_NOT_FOUND_MESSAGE = (
    "NVML library not found (libnvidia-ml.so.1): no NVIDIA driver on this host, "
    "or the container lacks the NVIDIA runtime"
)
_DRIVER_NOT_LOADED_MESSAGE = (
    "NVIDIA driver not loaded (NVML_ERROR_DRIVER_NOT_LOADED): the kernel module is not running on this host"
)
_VERSION_MISMATCH_MESSAGE = (
    "NVML library and kernel driver versions differ (NVML_ERROR_LIB_RM_VERSION_MISMATCH): "
    "the driver was upgraded without a reboot, or the container's libnvidia-ml does not match the host"
)


class NvmlUnavailable(SourceError):
    """NVML cannot be used on this host (no pynvml, no library, no driver); retried on the next read."""


class _GpuFailed(Exception):
    """Internal: this GPU cannot be read this pass."""


class _NvmlUninitialised(Exception):
    """Internal: NVML reported UNINITIALIZED mid-read (shut down under us)."""


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _error_code(err: BaseException) -> int | None:
    code = getattr(err, "value", None)
    return code if isinstance(code, int) else None


def _process_memory(value: object) -> float | None:
    if value is None or not isinstance(value, (int, float)):
        return None
    if value < 0 or value >= _VALUE_NOT_AVAILABLE_ULL:
        return None
    return float(value)


def _nvidia_ml_py_version() -> str:
    try:
        return importlib.metadata.version("nvidia-ml-py")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class NvmlSource:
    """Reads every GPU through NVML in one pass.

    ``nvml`` is the pynvml module to use (tests pass a fake); when None, ``pynvml`` is imported on
    first use. Initialisation happens lazily in :meth:`read`, under a lock, and is retried on the
    next read after a failure. :meth:`close` shuts NVML down; a later read initialises it again.
    """

    def __init__(self, nvml: ModuleType | None = None) -> None:
        self._nvml: ModuleType | None = nvml
        self._lock = threading.Lock()
        self._initialised = False
        self._driver_version: str | None = None
        self._log_lock = threading.Lock()
        self._logged: set[tuple[object, ...]] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    def _module(self) -> ModuleType:
        if self._nvml is None:
            try:
                self._nvml = importlib.import_module("pynvml")
            except ImportError as err:
                raise NvmlUnavailable(
                    f"pynvml is not importable ({err}): install nvidia-ml-py to read NVIDIA GPUs"
                ) from err
        return self._nvml

    def _ensure_initialised(self) -> ModuleType:
        with self._lock:
            nvml = self._module()
            if self._initialised:
                return nvml
            try:
                nvml.nvmlInit()
            except nvml.NVMLError as err:
                code = _error_code(err)
                if code == NVML_ERROR_LIBRARY_NOT_FOUND:
                    raise NvmlUnavailable(_LIBRARY_NOT_FOUND_MESSAGE) from err
                if code == NVML_ERROR_DRIVER_NOT_LOADED:
                    raise NvmlUnavailable(_DRIVER_NOT_LOADED_MESSAGE) from err
                if code == NVML_ERROR_LIB_RM_VERSION_MISMATCH:
                    raise NvmlUnavailable(_VERSION_MISMATCH_MESSAGE) from err
                raise SourceError(f"nvmlInit failed: {err} (NVML error {code})") from err
            self._initialised = True
            try:
                version = self._query(nvml, "driver_version", "nvmlSystemGetDriverVersion")
            except (_GpuFailed, _NvmlUninitialised):
                version = None
            self._driver_version = None if version is None else _text(version)
            return nvml

    def _mark_uninitialised(self) -> None:
        with self._lock:
            self._initialised = False

    def close(self) -> None:
        """Shut NVML down if this source initialised it; safe to call more than once."""
        with self._lock:
            if not self._initialised or self._nvml is None:
                return
            self._initialised = False
            nvml = self._nvml
            try:
                nvml.nvmlShutdown()
            except nvml.NVMLError as err:
                log.debug("nvmlShutdown failed: %s", err)

    def __enter__(self) -> NvmlSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- logging once ------------------------------------------------------------------------

    def _first_time(self, key: tuple[object, ...]) -> bool:
        with self._log_lock:
            if key in self._logged:
                return False
            self._logged.add(key)
            return True

    def _function_missing(self, fn_name: str, what: str, in_module: bool) -> None:
        if not self._first_time(("missing", fn_name)):
            return
        if in_module:
            log.warning(
                "NVML function %s not found in the driver's libnvidia-ml (driver %s, nvidia-ml-py %s): "
                "nvidia-ml-py is likely newer than the driver; pin nvidia-ml-py to the driver's major "
                "version or upgrade the driver. %s will be absent",
                fn_name,
                self._driver_version or "unknown",
                _nvidia_ml_py_version(),
                what,
            )
        else:
            log.warning(
                "pynvml has no %s (nvidia-ml-py %s is too old for it): upgrade nvidia-ml-py. "
                "%s will be absent",
                fn_name,
                _nvidia_ml_py_version(),
                what,
            )

    # -- guarded calls -----------------------------------------------------------------------

    def _query(self, nvml: ModuleType, what: str, fn_name: str, *args: Any) -> Any:
        """Call ``nvml.<fn_name>(*args)``; None when NVML does not provide the value.

        Raises _GpuFailed when the GPU is gone, _NvmlUninitialised when NVML was shut down.
        """
        fn = getattr(nvml, fn_name, None)
        if fn is None:
            self._function_missing(fn_name, what, in_module=False)
            return None
        mismatch = getattr(nvml, "NVMLLibraryMismatchError", None)
        try:
            return fn(*args)
        except nvml.NVMLError as err:
            code = _error_code(err)
            if code in _GPU_GONE_CODES:
                raise _GpuFailed(f"{fn_name}: {err}") from err
            if code == NVML_ERROR_UNINITIALIZED:
                raise _NvmlUninitialised(f"{fn_name}: {err}") from err
            if code == NVML_ERROR_FUNCTION_NOT_FOUND:
                self._function_missing(fn_name, what, in_module=True)
            elif code in _ABSENT_CODES:
                if self._first_time(("absent", fn_name, code)):
                    log.debug("%s: %s; %s will be absent", fn_name, err, what)
            elif self._first_time(("error", fn_name, code)):
                log.warning("%s failed: %s (NVML error %s); %s will be absent", fn_name, err, code, what)
            return None
        except Exception as err:
            # pynvml wraps FUNCTION_NOT_FOUND of unversioned calls (nvmlDeviceGetComputeRunningProcesses)
            # into NVMLLibraryMismatchError, which is not an NVMLError.
            if isinstance(mismatch, type) and isinstance(err, mismatch):
                self._function_missing(fn_name, what, in_module=True)
                return None
            raise

    @staticmethod
    def _identity(nvml: ModuleType, fn_name: str, *args: Any) -> Any:
        """Handle and identity calls: any NVMLError fails the GPU."""
        try:
            return getattr(nvml, fn_name)(*args)
        except nvml.NVMLError as err:
            code = _error_code(err)
            if code == NVML_ERROR_UNINITIALIZED:
                raise _NvmlUninitialised(f"{fn_name}: {err}") from err
            raise _GpuFailed(f"{fn_name}: {err} (NVML error {code})") from err

    # -- reading -----------------------------------------------------------------------------

    def read(self) -> NvmlReading:
        """Read every GPU once.

        Raises NvmlUnavailable when NVML cannot be loaded, SourceError when the GPUs cannot be
        counted; a GPU that fails on its own is listed in ``failed_gpus``.
        """
        nvml = self._ensure_initialised()
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as err:
            code = _error_code(err)
            if code in (NVML_ERROR_UNINITIALIZED, NVML_ERROR_DRIVER_NOT_LOADED):
                self._mark_uninitialised()
            raise SourceError(f"nvmlDeviceGetCount failed: {err} (NVML error {code})") from err

        gpus: list[GpuSample] = []
        failed: list[int] = []
        for index in range(count):
            try:
                gpus.append(self._read_gpu(nvml, index))
            except _GpuFailed as err:
                log.debug("GPU %d could not be read: %s", index, err)
                failed.append(index)
            except _NvmlUninitialised as err:
                self._mark_uninitialised()
                raise SourceError(f"NVML was shut down during the read ({err}); retrying next read") from err
        return NvmlReading(driver_version=self._driver_version, gpus=tuple(gpus), failed_gpus=tuple(failed))

    def _read_gpu(self, nvml: ModuleType, index: int) -> GpuSample:
        handle = self._identity(nvml, "nvmlDeviceGetHandleByIndex", index)
        uuid = _text(self._identity(nvml, "nvmlDeviceGetUUID", handle))
        name = _text(self._identity(nvml, "nvmlDeviceGetName", handle))

        def query(what: str, fn_name: str, *args: Any) -> Any:
            return self._query(nvml, what, fn_name, handle, *args)

        util = query("utilization", "nvmlDeviceGetUtilizationRates")
        # v2 reports used memory without the driver's reservation, as nvidia-smi does (v1 includes it)
        v2 = getattr(nvml, "nvmlMemory_v2", None)
        memory = query("memory usage", "nvmlDeviceGetMemoryInfo", v2) if v2 is not None else None
        if memory is None:
            memory = query("memory usage", "nvmlDeviceGetMemoryInfo")
        power_mw = query("power draw", "nvmlDeviceGetPowerUsage")
        limit_mw = query("power limit", "nvmlDeviceGetEnforcedPowerLimit")
        temperature = query(
            "temperature",
            "nvmlDeviceGetTemperature",
            getattr(nvml, "NVML_TEMPERATURE_GPU", _NVML_TEMPERATURE_GPU),
        )
        sm_mhz = query("SM clock", "nvmlDeviceGetClockInfo", getattr(nvml, "NVML_CLOCK_SM", _NVML_CLOCK_SM))
        energy_mj = query("energy counter", "nvmlDeviceGetTotalEnergyConsumption")
        procs = query("process list", "nvmlDeviceGetComputeRunningProcesses")

        processes: tuple[GpuProcess, ...] | None = None
        if procs is not None:
            processes = tuple(
                GpuProcess(
                    pid=int(p.pid), used_memory_bytes=_process_memory(getattr(p, "usedGpuMemory", None))
                )
                for p in procs
            )

        return GpuSample(
            index=index,
            uuid=uuid,
            name=name,
            utilization_ratio=None if util is None else util.gpu / 100,
            memory_bandwidth_utilization_ratio=None if util is None else util.memory / 100,
            memory_used_bytes=None if memory is None else float(memory.used),
            memory_total_bytes=None if memory is None else float(memory.total),
            power_watts=None if power_mw is None else power_mw / 1000,
            power_limit_watts=None if limit_mw is None else limit_mw / 1000,
            temperature_celsius=None if temperature is None else float(temperature),
            sm_clock_hertz=None if sm_mhz is None else float(sm_mhz * 1_000_000),
            energy_joules=None if energy_mj is None else energy_mj / 1000,
            processes=processes,
        )
