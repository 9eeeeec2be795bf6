from __future__ import annotations

import json

import pytest

from moesifasgi.delivery.client import classify_status
from moesifasgi.delivery.outcomes import PostOutcome, StopReason


@pytest.mark.parametrize("outcome", list(PostOutcome))
def test_an_outcome_reads_as_its_text_in_logs_json_and_dict_keys(outcome: PostOutcome) -> None:
    assert outcome == outcome.value and str(outcome) == outcome.value and f"{outcome}" == outcome.value
    assert "%s" % outcome == outcome.value and json.dumps(outcome) == json.dumps(outcome.value)
    assert {outcome.value: 1}[outcome] == 1


@pytest.mark.parametrize("status, outcome", [(202, PostOutcome.OK), (401, PostOutcome.AUTH), (413, PostOutcome.TOO_LARGE),
                                             (429, PostOutcome.RETRY), (400, PostOutcome.REJECT), (503, PostOutcome.RETRY)])
def test_a_status_is_classified_into_a_post_outcome(status: int, outcome: PostOutcome) -> None:
    assert classify_status(status) is outcome


@pytest.mark.parametrize("outcome", [o for o in PostOutcome if o is not PostOutcome.OK])
def test_every_failed_post_outcome_is_a_reason_for_a_drain_to_stop(outcome: PostOutcome) -> None:
    assert StopReason.after(outcome) == outcome.value
    assert StopReason.after(outcome.value) is StopReason.after(outcome)  # a plain string, as a stand-in client gives
