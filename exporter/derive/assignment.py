"""Which GPUs each engine uses."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


def assign_gpus(engines: Sequence[str], gpus: Sequence[int],
                explicit: Mapping[str, Sequence[int]] | None) -> dict[str, tuple[int, ...]]:
    """GPU indices per engine.

    Engines named in ``explicit`` (--engine-gpus) get exactly those GPUs. The others split the
    GPUs no explicit mapping claims, in order and in contiguous blocks; when there are more such
    engines than GPUs, the last ones get none. One engine alone owns every GPU.
    """
    explicit = explicit or {}
    result = {name: tuple(explicit[name]) for name in engines if name in explicit}
    claimed = {i for indices in result.values() for i in indices}
    free = [i for i in sorted(gpus) if i not in claimed]
    rest = [name for name in engines if name not in explicit]
    if rest:
        share, extra = divmod(len(free), len(rest))
        start = 0
        for position, name in enumerate(rest):
            size = share + (1 if position < extra else 0)
            result[name] = tuple(free[start:start + size])
            start += size
    return {name: result[name] for name in engines}


class StableAssignment:
    """GPU ownership fixed by UUID for the life of the process.

    A GPU's engine is decided when its UUID is first seen, by :func:`assign_gpus` over every GPU index
    NVML lists at that moment (those it could not read included, so that a GPU lost at start keeps its
    place in the split). A GPU that is lost or renumbered later never moves to another engine, and
    takes its place again when it returns.
    """

    def __init__(self, engines: Sequence[str], explicit: Mapping[str, Sequence[int]] | None) -> None:
        self._engines = tuple(engines)
        self._explicit = explicit
        self._owner: dict[str, str | None] = {}  # UUID -> engine (None: no engine's)

    def owned(self, gpus: Mapping[int, str], unreadable: Iterable[int] = ()) -> dict[str, tuple[str, ...]]:
        """UUIDs per engine, in order of first sight: ``gpus`` maps the GPUs read now (index -> UUID);
        ``unreadable`` are the indices NVML lists but could not read this pass."""
        new = {index: uuid for index, uuid in gpus.items() if uuid not in self._owner}
        if new:
            split = assign_gpus(self._engines, sorted({*gpus, *unreadable}), self._explicit)
            engine_of = {index: name for name, indices in split.items() for index in indices}
            for index, uuid in sorted(new.items()):
                self._owner[uuid] = engine_of.get(index)
        return {name: tuple(uuid for uuid, owner in self._owner.items() if owner == name) for name in self._engines}
