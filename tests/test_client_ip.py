from __future__ import annotations

import pytest

from moesifasgi.client_ip import client_ip

PEER = "10.0.0.9"


def test_the_socket_peer_is_used_when_no_header_names_a_client():
    assert client_ip({"host": "example.com"}, PEER) == PEER


def test_a_missing_peer_and_no_headers_give_none():
    assert client_ip({}, None) is None


def test_x_client_ip_wins_over_every_other_header():
    headers = {"x-client-ip": "1.1.1.1", "x-forwarded-for": "2.2.2.2", "x-real-ip": "3.3.3.3"}
    assert client_ip(headers, PEER) == "1.1.1.1"


def test_an_invalid_x_client_ip_falls_through_to_x_forwarded_for():
    headers = {"x-client-ip": "not-an-ip", "x-forwarded-for": "2.2.2.2"}
    assert client_ip(headers, PEER) == "2.2.2.2"


def test_x_forwarded_for_gives_its_left_most_entry():
    headers = {"x-forwarded-for": "203.0.113.7, 198.51.100.1, 10.0.0.1"}
    assert client_ip(headers, PEER) == "203.0.113.7"


def test_x_forwarded_for_skips_unknown_and_garbage_entries():
    headers = {"x-forwarded-for": "unknown, , not-an-ip, 203.0.113.7, 198.51.100.1"}
    assert client_ip(headers, PEER) == "203.0.113.7"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("203.0.113.7:51234", "203.0.113.7"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ('"203.0.113.7"', "203.0.113.7"),
    ],
)
def test_x_forwarded_for_entries_lose_their_port_brackets_and_quotes(entry, expected):
    assert client_ip({"x-forwarded-for": f"unknown, {entry}"}, PEER) == expected


def test_x_forwarded_for_with_only_unknown_entries_falls_through():
    headers = {"x-forwarded-for": "unknown, unknown", "cf-connecting-ip": "4.4.4.4"}
    assert client_ip(headers, PEER) == "4.4.4.4"


@pytest.mark.parametrize(
    "name",
    [
        "cf-connecting-ip",
        "fastly-client-ip",
        "true-client-ip",
        "x-real-ip",
        "x-cluster-client-ip",
        "x-forwarded",
        "forwarded-for",
        "forwarded",
    ],
)
def test_each_single_address_header_is_used_on_its_own(name):
    assert client_ip({name: "198.51.100.23"}, PEER) == "198.51.100.23"


def test_true_client_ip_wins_over_fastly_client_ip_as_in_the_original():
    headers = {"fastly-client-ip": "203.0.113.1", "true-client-ip": "203.0.113.2"}
    assert client_ip(headers, PEER) == "203.0.113.2"


def test_headers_are_tried_in_the_original_packages_order():
    order = [
        "x-client-ip",
        "x-forwarded-for",
        "cf-connecting-ip",
        "true-client-ip",
        "fastly-client-ip",
        "x-real-ip",
        "x-cluster-client-ip",
        "x-forwarded",
        "forwarded-for",
        "forwarded",
    ]
    headers = {name: f"192.0.2.{index + 1}" for index, name in enumerate(order)}
    for index, name in enumerate(order):
        assert client_ip(headers, PEER) == f"192.0.2.{index + 1}", name
        del headers[name]
    assert client_ip(headers, PEER) == PEER


def test_rfc_7239_forwarded_gives_the_first_for_address():
    value = 'for=unknown;proto=https, for="[2001:db8:cafe::17]:4711";by=203.0.113.43, for=192.0.2.60'
    assert client_ip({"forwarded": value}, PEER) == "2001:db8:cafe::17"


def test_rfc_7239_forwarded_ignores_by_and_obfuscated_identifiers():
    value = "by=203.0.113.43;for=_hidden, For=192.0.2.60;proto=http"
    assert client_ip({"forwarded": value}, PEER) == "192.0.2.60"


def test_values_that_are_not_addresses_leave_the_peer_in_place():
    headers = {
        "x-client-ip": "localhost",
        "x-forwarded-for": "unknown",
        "x-real-ip": "999.1.1.1",
        "forwarded": "for=_gazonk",
    }
    assert client_ip(headers, PEER) == PEER


def test_a_broken_header_mapping_never_raises():
    class Exploding(dict):
        def get(self, key, default=None):
            raise RuntimeError("boom")

    assert client_ip(Exploding(), PEER) == PEER


def test_non_text_header_values_never_raise():
    assert client_ip({"x-forwarded-for": b"1.2.3.4", "x-real-ip": 5}, PEER) == PEER
