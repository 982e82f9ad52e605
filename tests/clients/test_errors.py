"""Every refusal the master can send reads as a line a person can act on."""

from __future__ import annotations

import pytest

from atlas.clients.errors import REFUSALS, SiteRefused
from atlas.protocol.control import Error, ErrorCode


def test_every_error_code_has_its_own_label() -> None:
    assert set(REFUSALS) == set(ErrorCode)


@pytest.mark.parametrize("code", list(ErrorCode))
def test_a_refusal_names_the_code_and_keeps_the_masters_words(code: ErrorCode) -> None:
    failure = SiteRefused(Error(code=code, message="the master's own words."))
    assert failure.code == code.value
    assert str(failure).startswith(f"{REFUSALS[code].label}: the master's own words")
