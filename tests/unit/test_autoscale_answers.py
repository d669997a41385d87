"""A gateway's GET /demand answer read into reports."""

from __future__ import annotations

from typing import Any

import pytest

from privatellm.autoscale.answers import AnswerError, read_answer


def answer(instance: str = "a1", seq: int = 0, **figures: Any) -> dict[str, Any]:
    model = {"inFlight": 3, "waiting": 1, "held": 0, "wanted": False, "requestsTotal": 10}
    return {"instance": instance, "seq": seq, "models": {"llama": {**model, **figures}}}


def test_arrivals_are_counted_between_answers_of_one_process() -> None:
    first = read_answer("r1", answer(requestsTotal=10), None)
    assert first.reports["llama"].arrived == 0 and first.reports["llama"].in_flight == 3
    second = read_answer("r1", answer(requestsTotal=17), first)
    assert second.reports["llama"].arrived == 7
    restarted = read_answer("r1", answer(instance="b2", requestsTotal=2), second)
    assert restarted.reports["llama"].arrived == 0


def test_figures_pass_through_for_the_checks_of_aggregate_demand() -> None:
    read = read_answer("r1", answer(inFlight=-4, wanted=True), None)
    assert read.reports["llama"].in_flight == -4 and read.reports["llama"].wanted


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"seq": 0, "models": {}},
        {"instance": "a", "seq": -1, "models": {}},
        {"instance": "a", "seq": True, "models": {}},
        {"instance": "a", "seq": 0, "models": []},
        {"instance": "a", "seq": 0, "models": {"llama": 5}},
    ],
)
def test_what_is_not_a_demand_document_is_refused(body: Any) -> None:
    with pytest.raises(AnswerError):
        read_answer("r1", body, None)
