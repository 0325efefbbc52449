"""GPU-to-engine assignment."""

from exporter.derive.assignment import StableAssignment, assign_gpus


def test_one_engine_owns_every_gpu() -> None:
    assert assign_gpus(["a"], [0, 1, 2, 3], None) == {"a": (0, 1, 2, 3)}


def test_several_engines_split_in_order() -> None:
    assert assign_gpus(["a", "b"], [0, 1, 2, 3], None) == {"a": (0, 1), "b": (2, 3)}
    assert assign_gpus(["a", "b"], [0, 1, 2], None) == {"a": (0, 1), "b": (2,)}
    assert assign_gpus(["a", "b", "c"], [0], None) == {"a": (0,), "b": (), "c": ()}


def test_explicit_mapping_wins_and_the_rest_share_what_is_left() -> None:
    mapping = {"b": (0, 1)}
    assert assign_gpus(["a", "b", "c"], [0, 1, 2, 3], mapping) == {"a": (2,), "b": (0, 1), "c": (3,)}


def test_no_gpus() -> None:
    assert assign_gpus(["a", "b"], [], None) == {"a": (), "b": ()}


def _node(indices: range | list[int]) -> dict[int, str]:
    return {i: f"GPU-{i}" for i in indices}


def test_a_lost_gpu_stays_with_its_engine_and_returns_to_it() -> None:
    assignment = StableAssignment(["a", "b"], None)
    assert assignment.owned(_node(range(8))) == {"a": ("GPU-0", "GPU-1", "GPU-2", "GPU-3"),
                                                  "b": ("GPU-4", "GPU-5", "GPU-6", "GPU-7")}
    # GPU 4 falls off the bus: listed but unreadable, or gone from the count with the rest renumbered
    lost_listed = assignment.owned(_node([0, 1, 2, 3, 5, 6, 7]), unreadable=[4])
    renumbered = assignment.owned({i: f"GPU-{i + (i >= 4)}" for i in range(7)})
    for owned in (lost_listed, renumbered):
        assert owned["a"] == ("GPU-0", "GPU-1", "GPU-2", "GPU-3")
        assert owned["b"] == ("GPU-4", "GPU-5", "GPU-6", "GPU-7")  # still b's, though unreadable now
    assert assignment.owned(_node(range(8)))["b"] == ("GPU-4", "GPU-5", "GPU-6", "GPU-7")


def test_a_gpu_unreadable_at_start_keeps_its_place_in_the_split() -> None:
    assignment = StableAssignment(["a", "b"], None)
    first = assignment.owned(_node([0, 1, 2, 3, 5, 6, 7]), unreadable=[4])
    assert first == {"a": ("GPU-0", "GPU-1", "GPU-2", "GPU-3"), "b": ("GPU-5", "GPU-6", "GPU-7")}
    assert assignment.owned(_node(range(8)))["b"] == ("GPU-5", "GPU-6", "GPU-7", "GPU-4")


def test_explicit_indices_are_fixed_by_uuid_at_first_sight() -> None:
    assignment = StableAssignment(["a", "b"], {"b": (1,)})
    assert assignment.owned(_node(range(3))) == {"a": ("GPU-0", "GPU-2"), "b": ("GPU-1",)}
    # the GPUs come back renumbered: ownership follows the UUIDs, not the indices
    assert assignment.owned({0: "GPU-2", 1: "GPU-0", 2: "GPU-1"}) == {"a": ("GPU-0", "GPU-2"), "b": ("GPU-1",)}


def test_gpus_beyond_the_engines_belong_to_none() -> None:
    assignment = StableAssignment(["a"], {"a": (0,)})
    assert assignment.owned(_node(range(2))) == {"a": ("GPU-0",)}
