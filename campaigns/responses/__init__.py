"""Responses: what customers send back through the signed links.

``recording`` stores unsubscribes, survey answers and clicks, ``export`` lists them for
`retention responses`, ``pages`` renders the customer-facing pages.
"""

from __future__ import annotations

from campaigns.responses.export import ResponseRow, responses
from campaigns.responses.pages import Pages
from campaigns.responses.recording import (
    is_unsubscribed,
    record_click,
    submit_survey,
    survey_form,
    unsubscribe,
)

__all__ = [
    "Pages",
    "ResponseRow",
    "is_unsubscribed",
    "record_click",
    "responses",
    "submit_survey",
    "survey_form",
    "unsubscribe",
]
