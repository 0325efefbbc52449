"""Which GPUs each engine uses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


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
