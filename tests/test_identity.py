from __future__ import annotations

import base64
import json

import pytest

from moesifasgi.identity import parse_authorization_header_names, user_id_from_authorization

DEFAULT = ("authorization",)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwt(claims: dict) -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    return f"{header}.{payload}.{b64url(b'not-a-real-signature')}"


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def test_a_bearer_jwt_gives_its_sub_claim():
    headers = {"authorization": f"Bearer {jwt({'sub': 'user-42', 'name': 'Ada'})}"}
    assert user_id_from_authorization(headers, DEFAULT, "sub") == "user-42"


def test_a_payload_needing_base64url_and_padding_still_decodes():
    # "?>" and "~~" encode to "_" and "-" in base64url; the id length forces padding.
    user = "a?>b~~c" * 3 + "xy"
    token = jwt({"sub": user})
    payload = token.split(".")[1]
    assert ("-" in payload or "_" in payload) and len(payload) % 4
    assert user_id_from_authorization({"authorization": f"Bearer {token}"}, DEFAULT, "sub") == user


def test_the_bearer_scheme_is_matched_case_insensitively():
    headers = {"authorization": f"bearer {jwt({'sub': 'u1'})}"}
    assert user_id_from_authorization(headers, DEFAULT, "sub") == "u1"


def test_a_custom_field_is_read_instead_of_sub():
    token = jwt({"sub": "user-42", "client_id": "client-7"})
    headers = {"authorization": f"Bearer {token}"}
    assert user_id_from_authorization(headers, DEFAULT, "client_id") == "client-7"


def test_claim_names_are_compared_case_insensitively():
    token = jwt({"UserId": "U-9"})
    headers = {"authorization": f"Bearer {token}"}
    assert user_id_from_authorization(headers, DEFAULT, "userid") == "U-9"
    assert user_id_from_authorization(headers, DEFAULT, "USERID") == "U-9"


def test_a_numeric_claim_becomes_text():
    headers = {"authorization": f"Bearer {jwt({'sub': 12345})}"}
    assert user_id_from_authorization(headers, DEFAULT, "sub") == "12345"


@pytest.mark.parametrize("value", [None, True, {"id": 1}, ["a"], ""])
def test_claims_that_are_not_identifiers_give_none(value):
    headers = {"authorization": f"Bearer {jwt({'sub': value})}"}
    assert user_id_from_authorization(headers, DEFAULT, "sub") is None


def test_a_missing_claim_gives_none():
    headers = {"authorization": f"Bearer {jwt({'name': 'Ada'})}"}
    assert user_id_from_authorization(headers, DEFAULT, "sub") is None


def test_basic_credentials_give_the_user_name():
    headers = {"authorization": f"Basic {basic('alice', 'pa:ss:word')}"}
    assert user_id_from_authorization(headers, DEFAULT, "sub") == "alice"


def test_basic_credentials_without_padding_still_decode():
    token = basic("bob", "pw1").rstrip("=")
    assert len(token) % 4
    headers = {"authorization": f"Basic {token}"}
    assert user_id_from_authorization(headers, DEFAULT, "sub") == "bob"


def test_a_bare_jwt_without_scheme_is_read():
    headers = {"authorization": jwt({"sub": "bare-user"})}
    assert user_id_from_authorization(headers, DEFAULT, "sub") == "bare-user"


def test_a_jwt_after_a_custom_scheme_word_is_read():
    headers = {"authorization": f"JWT {jwt({'sub': 'custom-scheme-user'})}"}
    assert user_id_from_authorization(headers, DEFAULT, "sub") == "custom-scheme-user"


def test_a_bare_base64_json_payload_is_read():
    headers = {"x-user": b64url(json.dumps({"sub": "payload-user"}).encode())}
    assert user_id_from_authorization(headers, ("x-user",), "sub") == "payload-user"


def test_the_first_comma_separated_token_is_used():
    value = f"Bearer {jwt({'sub': 'first'})}, Bearer {jwt({'sub': 'second'})}"
    assert user_id_from_authorization({"authorization": value}, DEFAULT, "sub") == "first"


def test_only_the_first_comma_separated_token_is_decoded():
    value = f"Basic {basic('carol', 'pw')}, Bearer {jwt({'sub': 'second'})}"
    assert user_id_from_authorization({"authorization": value}, DEFAULT, "sub") == "carol"


def test_custom_header_names_are_tried_in_order_and_the_first_present_one_wins():
    names = parse_authorization_header_names("X-Api-Token, Authorization")
    both = {
        "x-api-token": f"Bearer {jwt({'sub': 'from-api-token'})}",
        "authorization": f"Bearer {jwt({'sub': 'from-authorization'})}",
    }
    assert user_id_from_authorization(both, names, "sub") == "from-api-token"
    only_second = {"authorization": both["authorization"]}
    assert user_id_from_authorization(only_second, names, "sub") == "from-authorization"


def test_a_present_but_unusable_first_header_does_not_fall_back_to_the_next():
    # The original stops at the first header present, usable or not.
    headers = {"x-api-token": "garbage", "authorization": f"Bearer {jwt({'sub': 'u'})}"}
    assert user_id_from_authorization(headers, ("x-api-token", "authorization"), "sub") is None


def test_a_present_but_empty_first_header_does_not_fall_back_to_the_next():
    headers = {"x-api-token": "", "authorization": f"Bearer {jwt({'sub': 'u'})}"}
    assert user_id_from_authorization(headers, ("x-api-token", "authorization"), "sub") is None


def test_a_header_not_in_the_configured_names_is_ignored():
    headers = {"authorization": f"Bearer {jwt({'sub': 'u'})}"}
    assert user_id_from_authorization(headers, ("x-api-token",), "sub") is None


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Bearer",
        "Bearer ",
        "Bearer a.b",
        "Bearer a..c",
        "Bearer a.%%%%.c",
        "Bearer a.e30.c",  # payload {} has no sub
        f"Bearer a.{b64url(b'[1, 2]')}.c",  # payload is not an object
        f"Bearer a.{b64url(b'not json')}.c",
        f"Bearer a.{b64url(bytes(range(256)))}.c",
        "Bearer a.A.c",  # impossible base64 length
        "Basic",
        "Basic !!!!",
        "Basic " + base64.b64encode(b"\xff\xfe:pw").decode(),  # not UTF-8
        f"Basic {basic('', 'pw')}",
        "Digest username=alice",
        "just words",
        "x" * 100_000,
    ],
)
def test_malformed_credentials_give_none(value):
    assert user_id_from_authorization({"authorization": value}, DEFAULT, "sub") is None


def test_non_text_header_values_and_broken_mappings_never_raise():
    class Exploding(dict):
        def get(self, key, default=None):
            raise RuntimeError("boom")

    assert user_id_from_authorization({"authorization": 42}, DEFAULT, "sub") is None
    assert user_id_from_authorization(Exploding(), DEFAULT, "sub") is None


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("authorization", ("authorization",)),
        ("X-Api-Token, Authorization", ("x-api-token", "authorization")),
        (" A ,, b ,", ("a", "b")),
        ("", ("authorization",)),
        (" , ", ("authorization",)),
        (None, ("authorization",)),
    ],
)
def test_header_name_settings_are_split_lowercased_and_stripped(setting, expected):
    assert parse_authorization_header_names(setting) == expected


def test_header_names_default_to_authorization():
    assert parse_authorization_header_names() == ("authorization",)
