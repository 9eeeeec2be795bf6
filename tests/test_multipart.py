from __future__ import annotations

import random
import tracemalloc

import pytest

from moesifasgi.multipart import MAX_FIELD_VALUE_BYTES, MAX_MULTIPART_FIELDS, MultipartSummary, is_multipart

MB = 1024 * 1024
CHUNK = 64 * 1024

BOUNDARY = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def part(name: str, value: bytes, filename: str | None = None, extra: str = "") -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n{extra}\r\n".encode()
    return head + value + b"\r\n"


def form(*parts: bytes, preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    return preamble + b"".join(parts) + f"--{BOUNDARY}--\r\n".encode() + epilogue


SMALL_FORM = form(
    part("title", b"Quarterly report"),
    part("tags", b"a"),
    part(
        "upload",
        b"%PDF-1.4 \r\n--not-the-boundary\r\n binary \x00\xff",
        "report.pdf",
        "Content-Type: application/pdf\r\n",
    ),
    part("tags", b"b"),
    part("note", "naïve ☃".encode()),
    part("empty", b""),
    preamble=b"ignored preamble\r\n",
    epilogue=b"ignored epilogue",
)
SMALL_EXPECTED = {
    "title": "Quarterly report",
    "tags": ["a", "b"],
    "upload": "report.pdf",
    "note": "naïve ☃",
    "empty": "",
}


def summarise(chunks, content_type=CONTENT_TYPE):
    summary = MultipartSummary.from_content_type(content_type)
    assert summary is not None
    for chunk in chunks:
        summary.feed(chunk)
    return summary.result()


def test_a_form_gives_text_values_and_file_names_with_repeated_names_as_lists():
    assert summarise([SMALL_FORM]) == SMALL_EXPECTED


def test_a_form_split_at_every_byte_offset_gives_the_same_summary():
    for cut in range(len(SMALL_FORM) + 1):
        assert summarise([SMALL_FORM[:cut], SMALL_FORM[cut:]]) == SMALL_EXPECTED, cut


def test_a_form_fed_one_byte_at_a_time_gives_the_same_summary():
    chunks = [SMALL_FORM[i : i + 1] for i in range(len(SMALL_FORM))]
    assert summarise(chunks) == SMALL_EXPECTED


def test_a_form_fed_in_random_pieces_gives_the_same_summary():
    rng = random.Random(7)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(SMALL_FORM)), 6))
        chunks = [SMALL_FORM[a:b] for a, b in zip([0, *cuts], [*cuts, len(SMALL_FORM)])]
        assert summarise(chunks) == SMALL_EXPECTED


def test_a_20_mb_upload_fed_in_chunks_gives_its_file_name_with_bounded_memory():
    rng = random.Random(1)
    block = bytearray(rng.getrandbits(8) for _ in range(CHUNK))
    # Near-misses of the delimiter, including one across each chunk edge.
    near_miss = f"\r\n--{BOUNDARY[:-1]}".encode()
    block[100 : 100 + len(near_miss)] = near_miss
    block[-10:] = near_miss[:10]
    block[:10] = near_miss[10:20]
    block = bytes(block)

    head = part("caption", b"holiday") + (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="video"; filename="trip.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()
    tail = b"\r\n" + part("after", b"yes") + f"--{BOUNDARY}--\r\n".encode()
    summary = MultipartSummary.from_content_type(CONTENT_TYPE)
    tracemalloc.start()
    try:
        summary.feed(head)
        for _ in range(20 * MB // CHUNK):
            summary.feed(block)
        summary.feed(tail)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary.result() == {"caption": "holiday", "video": "trip.mp4", "after": "yes"}
    # One chunk joined with a small carry-over: nothing near the file's size.
    assert peak < 3 * CHUNK
    assert len(summary._carry) < 100


def test_file_contents_are_never_kept_while_streaming():
    summary = MultipartSummary.from_content_type(CONTENT_TYPE)
    summary.feed(part("secret", b"TOP-SECRET-FILE-BYTES" * 10, "s.bin")[:-2])
    assert summary._value == []
    assert summary.result() == {"secret": "s.bin"}


def test_a_header_block_longer_than_the_cap_is_skipped_and_the_next_part_is_read():
    junk = f"--{BOUNDARY}\r\n".encode() + b"X-Junk: " + b"h" * 50_000 + b"\r\n\r\nbody\r\n"
    summary = MultipartSummary.from_content_type(CONTENT_TYPE)
    body = junk + form(part("next", b"ok"))
    for i in range(0, len(body), 1000):
        summary.feed(body[i : i + 1000])
        assert len(summary._carry) <= 9 * 1024
    assert summary.result() == {"next": "ok"}


def test_a_long_text_value_is_capped():
    result = summarise([form(part("essay", b"x" * 5000))])
    assert result == {"essay": "x" * MAX_FIELD_VALUE_BYTES}


def test_an_rfc_5987_file_name_is_decoded():
    head = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"doc\"; filename=\"fallback.txt\"; "
        "filename*=UTF-8''na%C3%AFve%20file.txt\r\n\r\n"
    ).encode()
    assert summarise([head + b"data\r\n" + f"--{BOUNDARY}--".encode()]) == {"doc": "naïve file.txt"}


def test_quoted_parameters_may_hold_semicolons_and_escaped_quotes():
    head = (
        f'--{BOUNDARY}\r\ncontent-disposition: form-data; filename="a;b \\"c\\".txt"; name="f"\r\n\r\n'
    ).encode()
    assert summarise([head + b"data\r\n" + f"--{BOUNDARY}--".encode()]) == {"f": 'a;b "c".txt'}


def test_an_empty_file_input_maps_to_an_empty_file_name():
    assert summarise([form(part("attachment", b"", ""))]) == {"attachment": ""}


def test_parts_without_a_name_are_skipped():
    nameless = f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\norphan\r\n".encode()
    assert summarise([nameless + form(part("kept", b"1"))]) == {"kept": "1"}


def test_a_part_still_streaming_is_included_with_what_arrived():
    body = part("done", b"1") + part("upload", b"partial file bytes", "big.iso")[:-2]
    assert summarise([body]) == {"done": "1", "upload": "big.iso"}


def test_the_number_of_fields_is_capped():
    body = form(*(part(f"f{i}", b"v") for i in range(MAX_MULTIPART_FIELDS + 20)))
    assert len(summarise([body])) == MAX_MULTIPART_FIELDS


def test_bytes_after_the_closing_delimiter_are_ignored():
    body = form(part("a", b"1")) + part("b", b"2") + f"--{BOUNDARY}--".encode()
    assert summarise([body]) == {"a": "1"}


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"no boundary anywhere",
        f"--{BOUNDARY}".encode(),
        f"--{BOUNDARY}\r\n".encode(),
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=".encode(),
        f"--{BOUNDARY}junk-without-line-end".encode() + b"x" * 1000,
        f"--{BOUNDARY}\r\n".encode() + b"X-Long: " + b"h" * 20_000,
        f"--{BOUNDARY}\r\nContent-Disposition: attachment\r\n\r\nx\r\n--{BOUNDARY}--".encode(),
        f"--{BOUNDARY}\r\nContent-Disposition\r\n\r\nx\r\n--{BOUNDARY}--".encode(),
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="\xff\xfe"\r\n\r\n'.encode("latin-1"),
        bytes(range(256)) * 40,
    ],
)
def test_garbage_never_raises_and_yields_few_or_no_fields(body):
    summary = MultipartSummary.from_content_type(CONTENT_TYPE)
    for cut in (0, 1, len(body) // 2, len(body)):
        summary.feed(body[:cut])
    summary.feed(body)
    result = summary.result()
    assert isinstance(result, dict) and len(result) <= 1


def test_random_garbage_never_raises():
    rng = random.Random(3)
    alphabet = [b"\r\n", b"--", BOUNDARY.encode(), b"Content-Disposition: form-data; name=\"a\"", b"x", b";"]
    for _ in range(200):
        body = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        summary = MultipartSummary.from_content_type(CONTENT_TYPE)
        for i in range(0, len(body), 7):
            summary.feed(body[i : i + 7])
        assert isinstance(summary.result(), dict)


def test_feeding_non_bytes_is_ignored_and_bytearrays_are_accepted():
    summary = MultipartSummary.from_content_type(CONTENT_TYPE)
    summary.feed(12345)  # type: ignore[arg-type]
    summary.feed("text")  # type: ignore[arg-type]
    summary.feed(bytearray(form(part("a", b"1"))))
    assert summary.result() == {"a": "1"}


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        (CONTENT_TYPE, BOUNDARY),
        ('multipart/form-data; charset=utf-8; boundary="quoted boundary"', "quoted boundary"),
        ("Multipart/Form-Data;BOUNDARY=abc", "abc"),
    ],
)
def test_the_boundary_is_read_from_the_content_type(content_type, boundary):
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\nv\r\n--{boundary}--\r\n'
    ).encode()
    assert summarise([body], content_type) == {"k": "v"}


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "application/json",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/mixed; boundary=x",
    ],
)
def test_no_summary_without_a_multipart_form_boundary(content_type):
    assert MultipartSummary.from_content_type(content_type) is None


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("multipart/form-data; boundary=x", True),
        ("  Multipart/Form-Data", True),
        ("multipart/mixed", False),
        ("application/x-www-form-urlencoded", False),
        ("", False),
        (None, False),
    ],
)
def test_is_multipart_recognises_form_data_only(content_type, expected):
    assert is_multipart(content_type) is expected
