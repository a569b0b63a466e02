"""SSE `Last-Event-ID` (`<request_id>:<index>`, as the gateway's events carry it) re-attaches."""

from __future__ import annotations

import pytest

from llmserve.common.errors import InvalidArgument
from llmserve.gateway.admission.validation import GenerateParams
from llmserve.gateway.http.api import resume_from_last_event


def test_the_header_names_the_request_and_the_index():
    params = GenerateParams(model="m")
    resume_from_last_event(params, "abc-1:17")
    assert (params.request_id, params.resume_from_index) == ("abc-1", 17)


def test_no_header_changes_nothing_and_the_body_index_wins():
    params = GenerateParams(model="m", request_id="r", resume_from_index=3)
    resume_from_last_event(params, None)
    resume_from_last_event(params, "r:9")
    assert (params.request_id, params.resume_from_index) == ("r", 3)


@pytest.mark.parametrize("value", ["17", "r:", "r:x", ":3"])
def test_a_malformed_header_is_refused(value):
    with pytest.raises(InvalidArgument):
        resume_from_last_event(GenerateParams(model="m"), value)


def test_a_header_for_another_request_is_refused():
    with pytest.raises(InvalidArgument):
        resume_from_last_event(GenerateParams(model="m", request_id="a"), "b:1")
