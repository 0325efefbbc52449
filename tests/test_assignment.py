"""GPU-to-engine assignment."""

from exporter.derive.assignment import assign_gpus


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
