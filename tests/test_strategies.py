"""Which replica takes which role: the pure step plans of control_plane/strategies.py."""

from __future__ import annotations

import pytest

from control_plane.errors import ConfigError
from control_plane.policy import Policy
from control_plane.strategies import canary_step, cut_over, first_step, next_size


def names(n: int) -> list[str]:
    return [f"r{i}" for i in range(n)]


@pytest.mark.parametrize(
    ("fleet", "steps", "sizes"),
    [
        (3, (1, "50%"), [1]),  # half of three is one: a single step
        (4, (1, "50%"), [1, 2]),
        (5, (1, "50%"), [1, 2]),  # capped at floor(5 / 2)
        (10, (1, "20%", "50%"), [1, 2, 5]),
        (10, (3, 2, "10%"), [3]),  # a step no larger than the last is dropped
        (6, ("100%",), [3]),  # never more canary replicas than baseline ones
    ],
)
def test_canary_sizes_are_capped_at_half_and_grow(fleet: int, steps: tuple[int | str, ...], sizes: list[int]) -> None:
    assert Policy(canary_steps=steps).canary_sizes(fleet) == sizes


def test_first_canary_step_gives_canary_then_baseline_then_stable_in_fleet_order() -> None:
    plan = first_step(Policy(), ["b", "a", "c", "d"])
    assert plan.strategy == "canary" and plan.share == 0.25
    assert plan.roles == {"b": "canary", "a": "baseline", "c": "stable", "d": "stable"}
    assert plan.reason.startswith("step 1 of 2")
    widened = canary_step(Policy(), ["b", "a", "c", "d"], 1)
    assert widened.roles == {"b": "canary", "a": "canary", "c": "baseline", "d": "baseline"}
    assert widened.share == 0.5


@pytest.mark.parametrize("strategy", ["auto", "canary"])
def test_fewer_than_three_replicas_fall_back_to_bluegreen_and_say_so(strategy: str) -> None:
    plan = first_step(Policy(strategy=strategy), names(2))
    assert plan.strategy == "bluegreen" and plan.share == 0.0
    assert set(plan.roles.values()) == {"stable"} and "needs 3 reachable" in plan.reason


def test_bluegreen_on_any_fleet_then_cut_over() -> None:
    plan = first_step(Policy(strategy="bluegreen"), names(5))
    assert plan.strategy == "bluegreen" and set(plan.roles.values()) == {"stable"}
    after = cut_over(names(5))
    assert after.share == 1.0 and set(after.roles.values()) == {"bluegreen"}


def test_next_step_index_and_the_last() -> None:
    policy = Policy(canary_steps=(1, "50%"))
    assert next_size(policy, 4, done=1) == 1
    assert next_size(policy, 4, done=2) is None
    assert next_size(policy, 3, done=1) is None  # on three replicas the first step is the last


@pytest.mark.parametrize("bad", [0, -1, "0%", "150%", "half", True, 1.5])
def test_bad_canary_steps_are_config_errors(bad: object) -> None:
    with pytest.raises(ConfigError, match="canary_steps"):
        Policy(canary_steps=(bad,))  # type: ignore[arg-type]


def test_unknown_strategy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="strategy"):
        Policy(strategy="yolo")
