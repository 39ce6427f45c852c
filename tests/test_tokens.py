"""Signed link tokens: per-purpose salts, expiry, tampering, key rotation."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from campaigns.delivery.tokens import Purpose, Signer, links
from campaigns.errors import ConfigurationError, InvalidToken, RetentionError


@pytest.fixture
def signer() -> Signer:
    return Signer(["current-secret"])


def test_unsubscribe_token_roundtrips(signer: Signer) -> None:
    token = signer.unsubscribe_token(42)
    assert signer.load("unsubscribe", token) == {"delivery_id": 42}


def test_survey_token_roundtrips(signer: Signer) -> None:
    assert signer.load(Purpose.survey, signer.survey_token(7)) == {"delivery_id": 7}


def test_click_token_carries_the_target_url(signer: Signer) -> None:
    token = signer.click_token(9, "https://acme.example/reports?x=1")
    assert signer.load("click", token) == {"delivery_id": 9, "url": "https://acme.example/reports?x=1"}


def test_tokens_are_url_safe_and_short(signer: Signer) -> None:
    token = signer.unsubscribe_token(123456789)
    assert len(token) < 60
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def test_tampered_token_is_refused(signer: Signer) -> None:
    token = signer.unsubscribe_token(42)
    _payload, rest = token.split(".", 1)
    forged = signer.unsubscribe_token(43).split(".", 1)[0] + "." + rest
    with pytest.raises(InvalidToken, match="invalid unsubscribe token: the signature does not match"):
        signer.load("unsubscribe", forged)
    # Not the last character: its low bits may be base64 padding that decodes the same.
    at = len(token) - 5
    flipped = token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1:]
    with pytest.raises(InvalidToken) as caught:
        signer.load("unsubscribe", flipped)
    assert caught.value.reason == "tampered"
    assert isinstance(caught.value, RetentionError)


def test_garbage_token_is_refused(signer: Signer) -> None:
    with pytest.raises(InvalidToken, match="signature does not match"):
        signer.load("survey", "not-a-token")


def test_token_for_another_purpose_is_refused_and_named(signer: Signer) -> None:
    survey = signer.survey_token(42)
    with pytest.raises(InvalidToken, match="it is a survey token, not a unsubscribe token") as caught:
        signer.load("unsubscribe", survey)
    assert caught.value.reason == "wrong_purpose"


def test_expired_token_is_refused(signer: Signer) -> None:
    token = signer.survey_token(42)
    time.sleep(1.1)  # itsdangerous timestamps have one-second resolution
    with pytest.raises(InvalidToken, match="expired survey link: it is older than 0s") as caught:
        signer.load("survey", token, max_age=timedelta(0))
    assert caught.value.reason == "expired"
    assert signer.load("survey", token, max_age=timedelta(days=30)) == {"delivery_id": 42}


def test_rotated_key_still_verifies_old_tokens_and_signs_with_the_new() -> None:
    old = Signer(["old-secret"])
    old_token = old.unsubscribe_token(5)
    rotated = Signer(["new-secret", "old-secret"])
    assert rotated.load("unsubscribe", old_token) == {"delivery_id": 5}
    new_token = rotated.unsubscribe_token(5)
    assert Signer(["new-secret"]).load("unsubscribe", new_token) == {"delivery_id": 5}
    with pytest.raises(InvalidToken, match="signature does not match"):
        old.load("unsubscribe", new_token)


def test_retired_key_no_longer_verifies() -> None:
    token = Signer(["old-secret"]).unsubscribe_token(5)
    with pytest.raises(InvalidToken, match="signed with a key no longer configured"):
        Signer(["new-secret"]).load("unsubscribe", token)


@pytest.mark.parametrize("keys", [[], [""], ["ok", ""]], ids=["none", "empty", "one_empty"])
def test_signer_refuses_missing_keys(keys: list[str]) -> None:
    with pytest.raises(ConfigurationError, match="set RETENTION_SECRET_KEY"):
        Signer(keys)


def test_signer_refuses_a_bare_string() -> None:
    with pytest.raises(TypeError, match="list of keys"):
        Signer("secret")


def test_unknown_purpose_is_a_programming_error(signer: Signer) -> None:
    with pytest.raises(ValueError, match="'password' is not a valid Purpose"):
        signer.load("password", signer.survey_token(1))


def test_links_build_public_urls_that_verify(signer: Signer) -> None:
    link = links("https://mail.acme.example/", signer, 77)
    assert link.unsubscribe_url.startswith("https://mail.acme.example/u/")
    assert link.survey_url.startswith("https://mail.acme.example/s/")
    tracked = link.track("https://acme.example/reports")
    assert tracked.startswith("https://mail.acme.example/c/")
    assert signer.load("unsubscribe", link.unsubscribe_url.rsplit("/", 1)[1]) == {"delivery_id": 77}
    assert signer.load("survey", link.survey_url.rsplit("/", 1)[1]) == {"delivery_id": 77}
    assert signer.load("click", tracked.rsplit("/", 1)[1]) == {
        "delivery_id": 77, "url": "https://acme.example/reports",
    }


@pytest.mark.parametrize("url", ["javascript:alert(1)", "/relative", "ftp://x.example"])
def test_track_refuses_non_http_targets(signer: Signer, url: str) -> None:
    with pytest.raises(ValueError, match="track\\(\\) needs an absolute http\\(s\\) URL"):
        links("https://m.example", signer, 1).track(url)


@pytest.mark.parametrize("keys", [["current-secret"], ["new-secret", "old-secret"]],
                         ids=["one_key", "rotated"])
def test_tokens_are_the_bytes_itsdangerous_writes(keys: list[str]) -> None:
    """Signer writes tokens itself (it is on the send path); they must stay itsdangerous's."""
    from campaigns.delivery.tokens import _Serializer

    signer = Signer(keys)
    reference = {purpose: _Serializer(list(reversed(keys)), salt=f"retention.{purpose.value}")
                 for purpose in Purpose}
    for _ in range(3):  # a second boundary between the two calls would differ: try again
        second = int(time.time())
        ours = [signer.unsubscribe_token(42), signer.survey_token(7),
                signer.click_token(9, "https://acme.example/café?q=1&r=ü")]
        theirs = [reference[Purpose.unsubscribe].dumps(42), reference[Purpose.survey].dumps(7),
                  reference[Purpose.click].dumps([9, "https://acme.example/café?q=1&r=ü"])]
        if int(time.time()) == second:
            break
    assert ours == theirs
