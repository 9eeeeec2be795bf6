"""The declarative masks on each body form, as pure functions over an event."""
from __future__ import annotations

import base64
import json

import pytest

from moesifasgi.bodies import truncation_marker
from moesifasgi.field_masks import MASK_MARKER, Masker, maskers_for
from moesifasgi.settings import parse_settings

SECRET = "hunter2-Zq9"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def request_event(body, encoding="json", content_type="application/json", uri="http://api.test/login"):
    return {
        "request": {"uri": uri, "verb": "POST", "headers": {"content-type": content_type},
                    "body": body, "transfer_encoding": encoding},
        "response": {"status": 200, "headers": {}},
        "direction": "Incoming",
    }


MASKER = Masker(request_fields=["password", "api_key"], response_fields=["token"],
                request_headers=["X-Secret"], response_headers=["set-cookie"])


def masked_request_bytes(raw: bytes, content_type: str = "application/json") -> bytes:
    event = MASKER.apply(request_event(b64(raw), "base64", content_type))
    assert event["request"]["transfer_encoding"] == "base64"
    return unb64(event["request"]["body"])


def test_parsed_json_is_masked_at_any_depth_whatever_the_case_of_the_key():
    body = {"user": "a", "Password": SECRET, "items": [{"deep": {"PASSWORD": {"nested": SECRET}}}]}
    event = MASKER.apply(request_event(body))
    assert event["request"]["body"] == {"user": "a", "Password": MASK_MARKER,
                                        "items": [{"deep": {"PASSWORD": MASK_MARKER}}]}


def test_json_or_a_form_held_inside_a_string_field_is_masked_too():
    body = {"payload": json.dumps({"password": SECRET}), "query": f"x=1&password={SECRET}",
            "error": f"GET /login?api_key={SECRET} failed"}
    text = json.dumps(MASKER.apply(request_event(body))["request"]["body"])
    assert SECRET not in text and text.count(MASK_MARKER) == 3


@pytest.mark.parametrize("raw", [
    b'{"user": "a", "password": "%s",}',                     # invalid: trailing comma
    b'{"user": "a", "ratio": NaN, "password": "%s"}',         # NaN: valid for Python, not for orjson
    b'{"user": "a", "password": "%s"',                         # cut before its end
    b'{"data": "{\\"password\\": \\"%s\\"}", "n": 1,}',         # JSON escaped inside a string
    b'{"pass\\u0077ord": "%s",}',                             # the key spelled with an escape
    b"{'password': '%s'}",                                     # Python repr, single quotes
    b'password: %s\nnext: line',                               # YAML or a log line
    b'password="%s" rest',
    b'<login><user>a</user><password>%s</password></login>',  # XML
    b'<login><password><![CDATA[%s',                           # XML cut inside the element
])
def test_a_body_stored_as_base64_loses_the_value_and_keeps_the_rest(raw):
    masked = masked_request_bytes(raw.replace(b"%s", SECRET.encode()), "text/plain")
    assert SECRET.encode() not in masked and MASK_MARKER.encode() in masked


def test_a_form_body_is_masked_by_decoded_field_name():
    masked = masked_request_bytes(b"user=a&pass%77ord=" + SECRET.encode() + b"&x=1",
                                  "application/x-www-form-urlencoded")
    assert masked == b"user=a&pass%77ord=" + MASK_MARKER.encode() + b"&x=1"


def test_a_value_cut_off_by_truncation_is_removed_with_the_rest_and_the_marker_line_stays():
    marker = b"\n[moesifasgi: body truncated after 40 bytes; 9000 bytes were sent]"
    raw = b'{"user": "a", "password": {"x": ["' + SECRET[:5].encode() + marker
    masked = masked_request_bytes(raw)
    assert masked == b'{"user": "a", "password": ' + MASK_MARKER.encode() + marker


def test_a_value_whose_end_is_found_keeps_what_follows():
    masked = masked_request_bytes(b'{"password": {"a": ["}", 1]}, "user": "a",}')
    assert masked == b'{"password": "' + MASK_MARKER.encode() + b'", "user": "a",}'


def test_raw_multipart_text_loses_the_masked_part():
    raw = (b'--b\r\nContent-Disposition: form-data; name="password"\r\n\r\n' + SECRET.encode()
           + b'\r\n--b\r\nContent-Disposition: form-data; name="a"\r\n\r\nkeep\r\n--b--\r\n')
    masked = masked_request_bytes(raw, "multipart/form-data; boundary=b")
    assert SECRET.encode() not in masked and b"keep" in masked


def test_the_query_string_headers_and_response_fields_are_masked_by_their_own_settings():
    event = request_event({"token": "mine"}, uri=f"http://api.test/x?a=1&API_KEY={SECRET}#top")
    event["request"]["headers"]["x-secret"] = SECRET
    event["response"].update(body={"token": SECRET, "password": "not a response mask"},
                             transfer_encoding="json", headers={"Set-Cookie": SECRET})
    MASKER.apply(event)
    assert event["request"]["uri"] == f"http://api.test/x?a=1&API_KEY={MASK_MARKER}#top"
    assert event["request"]["headers"]["x-secret"] == MASK_MARKER
    assert event["request"]["body"] == {"token": "mine"}
    assert event["response"]["body"] == {"token": MASK_MARKER, "password": "not a response mask"}
    assert event["response"]["headers"] == {"Set-Cookie": MASK_MARKER}


def test_base64_that_is_not_ours_is_replaced_whole_rather_than_guessed():
    event = MASKER.apply(request_event("!!not base64!!", "base64"))
    assert unb64(event["request"]["body"]) == MASK_MARKER.encode()


def test_a_body_without_any_masked_name_is_left_exactly_as_it_was():
    original = b64(b'{"user": "a",}')
    event = MASKER.apply(request_event(original, "base64"))
    assert event["request"]["body"] == original


def test_settings_take_lists_or_comma_separated_names_and_reject_anything_else():
    settings = parse_settings({"APPLICATION_ID": "x", "REQUEST_BODY_MASKS": ["Password", " pin "],
                               "RESPONSE_HEADER_MASKS": "Set-Cookie, X-Token"})
    assert settings.request_body_masks == ("password", "pin")
    assert settings.response_header_masks == ("set-cookie", "x-token")
    with pytest.raises(TypeError, match="REQUEST_HEADER_MASKS"):
        parse_settings({"APPLICATION_ID": "x", "REQUEST_HEADER_MASKS": [1]})


def test_with_no_masks_incoming_events_skip_masking_and_outgoing_ones_redact_credentials_by_default():
    incoming, outgoing = maskers_for(parse_settings({"APPLICATION_ID": "x"}))
    assert incoming is None and outgoing is not None
    assert "authorization" in outgoing.request_headers and "api_key" in outgoing.request_fields
    incoming, outgoing = maskers_for(parse_settings({"APPLICATION_ID": "x", "REDACT_OUTGOING_CREDENTIALS": False}))
    assert incoming is None and outgoing is None


def test_outgoing_credentials_in_headers_query_user_info_and_token_answers_are_redacted():
    _, outgoing = maskers_for(parse_settings({"APPLICATION_ID": "x"}))
    event = {
        "request": {"uri": f"https://bot:{SECRET}@api.example/v1?access_token={SECRET}&page=2#id_token={SECRET}",
                    "verb": "POST",
                    "headers": {"authorization": f"Bearer {SECRET}", "x-api-key": SECRET, "cookie": f"s={SECRET}"},
                    "body": b64(f"grant_type=client_credentials&client_secret={SECRET}".encode()),
                    "transfer_encoding": "base64"},
        "response": {"status": 200, "headers": {"set-cookie": SECRET},
                     "body": {"access_token": SECRET, "expires_in": 3600}, "transfer_encoding": "json"},
        "direction": "Outgoing",
    }
    outgoing.apply(event)
    text = json.dumps(event) + unb64(event["request"]["body"]).decode()
    assert SECRET not in text
    assert event["request"]["uri"] == (f"https://bot:{MASK_MARKER}@api.example/v1?access_token={MASK_MARKER}&page=2"
                                       f"#id_token={MASK_MARKER}")
    assert event["response"]["body"]["expires_in"] == 3600


@pytest.mark.parametrize("marker", [truncation_marker(40, 9000), truncation_marker(40, None),
                                    truncation_marker(40, 900, compressed=True)])
def test_every_truncation_marker_bodies_can_write_is_kept_whole(marker):
    masked = masked_request_bytes(b'{"password": "' + SECRET.encode() + marker)
    assert masked.endswith(marker) and SECRET.encode() not in masked
