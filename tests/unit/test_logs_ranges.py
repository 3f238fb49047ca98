"""Byte ranges and tails of logs: the llm-d contract, and reads that do not grow with the file."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app import logs


@pytest.mark.parametrize("header,total,expected", [
    (None, 30, (0, 29, False)),
    ("bytes=0-14", 30, (0, 14, True)),
    ("bytes=15-29", 30, (15, 29, True)),
    ("bytes=15-", 30, (15, 29, True)),
    ("bytes=15-999", 30, (15, 29, True)),
    (None, 5 * logs.MAX_CHUNK, (0, logs.MAX_CHUNK - 1, False)),
    ("bytes=10-", 5 * logs.MAX_CHUNK, (10, logs.MAX_CHUNK + 9, True)),
])
def test_ranges(header, total, expected):
    assert logs.byte_range(header, total) == expected


@pytest.mark.parametrize("header,status", [("bytes=-5", 400), ("items=0-1", 400), ("bytes=a-b", 400),
                                           ("bytes=5-1", 400), ("bytes=30-", 416), ("bytes=0-1,3-4", 400)])
def test_bad_ranges(header, status):
    with pytest.raises(logs.RangeError) as caught:
        logs.byte_range(header, 30)
    assert caught.value.status == status and caught.value.total == 30


def test_a_start_of_thousands_of_digits_is_past_the_end_and_the_message_stays_short():
    with pytest.raises(logs.RangeError) as caught:
        logs.byte_range(f"bytes={'9' * 5000}-", 30)
    assert caught.value.status == 416 and "5000 digits" in caught.value.message and len(caught.value.message) < 200
    assert logs.byte_range(f"bytes=10-{'9' * 5000}", 30) == (10, 29, True)  # an end that far: to the end
    with pytest.raises(logs.RangeError) as caught:
        logs.byte_range(f"bytes=1-{'x' * 5000}", 30)
    assert caught.value.status == 400 and len(caught.value.message) < 200
    with pytest.raises(logs.RangeError) as caught:
        logs.byte_range("bytes=\u0661-", 30)  # an Arabic-Indic digit is no byte offset
    assert caught.value.status == 400


@given(total=st.integers(1, 10**10), start=st.integers(0, 10**10), length=st.integers(0, 10**7))
def test_any_satisfiable_range_stays_inside_the_file_and_under_a_mebibyte(total, start, length):
    try:
        first, last, partial = logs.byte_range(f"bytes={start}-{start + length}", total)
    except logs.RangeError as exc:
        assert exc.status == 416 and start >= total
        return
    assert partial and first == start and first <= last < total and last - first < logs.MAX_CHUNK


def test_tail_and_find(tmp_path):
    (tmp_path / "vllm.log").write_text("".join(f"line {n}\n" for n in range(100_000)))
    assert logs.tail_lines(tmp_path / "vllm.log", 3) == ["line 99997", "line 99998", "line 99999"]
    assert logs.find(tmp_path, "vllm") == tmp_path / "vllm.log"
    assert logs.find(tmp_path, "../etc/passwd") is None and logs.find(tmp_path, "..") is None


def test_rotated_parts_are_listed_after_the_current_logs_and_can_be_read(tmp_path):
    for name in ("vllm.log", "caddy.log", "vllm.log.10", "vllm.log.2", "vllm.log.1", "notes.txt", "vllm.log.bak"):
        (tmp_path / name).write_text(name)
    names = [entry["name"] for entry in logs.listing(tmp_path)]
    assert names == ["caddy", "vllm", "vllm.log.1", "vllm.log.2", "vllm.log.10"]
    assert logs.find(tmp_path, "vllm.log.2") == tmp_path / "vllm.log.2"
