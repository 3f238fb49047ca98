"""GET /v2/vllm/instances/{id}/log on the booted appliance: upstream's log tests (TestAPIEndpoints' log endpoint
tests, TestVllmInstanceLogs, TestLogFile, TestLogStartOffset, TestParseRangeHeader, TestLogFileCleanup, the manager's
log tests) translated to HTTP. The instance's engine is stopped, then its log file written with the test's bytes,
as upstream's tests write the launcher's log file."""
from __future__ import annotations

import pytest

from tests.manager.test_swap import wait_for

MIB = 1024 * 1024


@pytest.fixture
def log(fresh_appliance):
    """(read, write, client, url): read(range) GETs test-id's log; write(bytes or None) sets or removes its file."""
    app = fresh_appliance
    with app.client(timeout=60) as client:
        url = app.portal_url("/v2/vllm/instances/test-id/log")
        assert client.put(app.portal_url("/v2/vllm/instances/test-id"),
                          json={"options": "--model acme/log-test"}).status_code == 201
        wait_for(lambda: client.get(app.portal_url("/v2/vllm/instances/test-id")).json()["ready"])
        client.post(app.portal_url("/api/instances/test-id/stop"))  # nothing writes to the log any more
        path = app.root / "var/log/portal/test-id.log"

        def write(data: bytes | None) -> None:
            if data is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(data)

        def read(range_: str | None = None):
            return client.get(url, headers={"Range": range_} if range_ else {})

        yield read, write, client, app


def test_without_range_200_all_of_it_with_content_range(log):
    """TestAPIEndpoints.test_get_instance_logs_endpoint; TestVllmMultiProcessManager.test_get_instance_log_bytes;
    TestVllmInstanceLogs.test_get_log_bytes_with_content; TestLogFile.test_basic_retrieval"""
    read, write, *_ = log
    write(b"Log line 1Log line 2Log line 3")
    answer = read()
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/octet-stream"
    assert answer.content == b"Log line 1Log line 2Log line 3"
    assert answer.headers["content-range"] == "bytes 0-29/30"
    write(b"Test message 1Test message 2")
    assert read().content == b"Test message 1Test message 2" and read().headers["content-range"] == "bytes 0-27/28"


def test_a_range_is_206_with_exactly_those_bytes(log):
    """TestAPIEndpoints.test_get_instance_logs_with_range_header, test_get_instance_logs_partial_content_206;
    TestVllmMultiProcessManager.test_get_instance_log_bytes_with_end; TestVllmInstanceLogs.test_get_log_bytes_with_end;
    TestLogFile.test_end_limit_enforcement, test_partial_retrieval_with_end; TestParseRangeHeader.test_full_range"""
    read, write, *_ = log
    write(b"A" * 50 + b"B" * 50 + b"C" * 50)
    first = read("bytes=0-99")
    assert first.status_code == 206 and first.content == b"A" * 50 + b"B" * 50
    assert first.headers["content-range"] == "bytes 0-99/150"
    write(b"A" * 20 + b"B" * 20 + b"C" * 20)
    assert read("bytes=0-44").content == b"A" * 20 + b"B" * 20 + b"C" * 5
    write(bytes(range(100)))
    middle = read("bytes=10-14")
    assert middle.status_code == 206 and middle.content == bytes(range(10, 15))
    assert middle.headers["content-range"] == "bytes 10-14/100"
    write("".join(f"Message {i}" for i in range(10)).encode())
    assert len(read("bytes=0-49").content) == 50


def test_an_open_range_runs_to_the_end(log):
    """TestAPIEndpoints.test_get_instance_logs_open_ended_range; TestLogStartOffset.test_start_offset,
    test_start_at_message_boundary; TestParseRangeHeader.test_open_ended_range"""
    read, write, *_ = log
    write(b"A" * 10 + b"B" * 10 + b"C" * 10)
    rest = read("bytes=15-")
    assert rest.status_code == 206 and rest.content == b"B" * 5 + b"C" * 10
    assert rest.headers["content-range"] == "bytes 15-29/30"
    assert read("bytes=10-").content == b"B" * 10 + b"C" * 10
    write(b"x" * 100 + b"rest of log")
    assert read("bytes=100-").headers["content-range"] == "bytes 100-110/111"


def test_an_end_past_the_log_stops_at_its_end(log):
    """TestLogFile.test_end_larger_than_content"""
    read, write, *_ = log
    write(b"ShortMessage")
    answer = read("bytes=0-9999")
    assert answer.status_code == 206 and answer.content == b"ShortMessage"
    assert answer.headers["content-range"] == "bytes 0-11/12"


def test_a_start_at_or_past_the_end_is_416_with_the_size(log):
    """TestAPIEndpoints.test_get_instance_logs_range_not_available;
    TestLogStartOffset.test_start_beyond_available_raises_error, test_start_equal_to_length_raises_error"""
    read, write, *_ = log
    write(b"A" * 10 + b"B" * 10)
    past = read("bytes=50-")
    assert past.status_code == 416 and past.headers["content-range"] == "bytes */20" and past.content == b""
    write(b"A" * 10)
    at_end = read("bytes=10-")
    assert at_end.status_code == 416 and at_end.headers["content-range"] == "bytes */10"


@pytest.mark.parametrize("exists", [True, False], ids=["empty", "missing"])
def test_an_empty_or_missing_log_is_416_even_without_range(log, exists):
    """The seed-era difference: TestVllmInstanceLogs.test_get_log_bytes_no_file, test_get_log_bytes_empty_file;
    TestLogFile.test_empty_file; TestLogStartOffset.test_no_file_with_start_raises_error"""
    read, write, *_ = log
    write(b"" if exists else None)
    for range_ in (None, "bytes=0-", "bytes=10-"):
        answer = read(range_)
        assert answer.status_code == 416, (range_, answer.status_code)
        assert answer.headers["content-range"] == "bytes */0" and answer.content == b""


def test_bytes_come_back_as_they_are(log):
    """TestLogFile.test_unicode_bytes"""
    read, write, *_ = log
    raw = "Hello 世界Test émojis 🚀".encode() + b"\xff\xfe not utf-8"
    write(raw)
    assert read().content == raw and read().headers["content-range"] == f"bytes 0-{len(raw) - 1}/{len(raw)}"


def test_a_growing_log_is_read_as_it_grows(log):
    """TestVllmInstanceLogs.test_get_log_bytes_persists_across_calls"""
    read, write, *_ = log
    write(b"Hello World")
    assert read().content == b"Hello World"
    write(b"Hello World!")
    answer = read("bytes=0-")
    assert answer.content == b"Hello World!" and answer.headers["content-range"] == "bytes 0-11/12"


def test_at_most_one_mebibyte_per_answer(log):
    """TestHelperFunctions.test_max_log_response_bytes_constant; TestParseRangeHeader.test_large_values"""
    read, write, *_ = log
    data = bytes(i % 251 for i in range(MIB * 5 // 2))
    write(data)
    whole = read()
    assert whole.status_code == 200 and whole.content == data[:MIB]
    assert whole.headers["content-range"] == f"bytes 0-{MIB - 1}/{len(data)}"
    second = read(f"bytes={MIB}-{2 * MIB - 1}")
    assert second.status_code == 206 and second.content == data[MIB:2 * MIB]
    assert second.headers["content-range"] == f"bytes {MIB}-{2 * MIB - 1}/{len(data)}"
    last = read(f"bytes={2 * MIB}-")
    assert last.content == data[2 * MIB:] and len(read("bytes=0-").content) == MIB


@pytest.mark.parametrize("bad", ["invalid", "bytes=-500", "items=0-99", "not-a-range", "bytes=100-50", "bytes=0-1,4-5"])
def test_a_malformed_range_is_400(log, bad):
    """TestAPIEndpoints.test_get_instance_logs_invalid_range, test_get_instance_logs_suffix_range_rejected;
    TestParseRangeHeader.test_suffix_range_rejected, test_invalid_unit, test_garbage_input, test_end_less_than_start"""
    read, write, *_ = log
    write(b"A" * 200)
    answer = read(bad)
    assert answer.status_code == 400 and answer.json()["detail"], answer.text


def test_an_unknown_instance_is_404(log):
    """TestAPIEndpoints.test_get_instance_logs_nonexistent_endpoint;
    TestVllmMultiProcessManager.test_get_instance_log_bytes_nonexistent"""
    _, _, client, app = log
    answer = client.get(app.portal_url("/v2/vllm/instances/nonexistent-id/log"))
    assert answer.status_code == 404 and "not found" in answer.json()["detail"]


def test_a_deleted_instance_takes_its_log_with_it(log):
    """TestLogFileCleanup.test_stop_terminated_cleans_up_log_file, test_cleanup_missing_file_no_error; the seed-era
    difference: a new instance of the same id never serves the old one's bytes"""
    read, write, client, app = log
    write(b"the old instance's secret\n")
    assert client.delete(app.portal_url("/v2/vllm/instances/test-id")).status_code == 200
    assert not (app.root / "var/log/portal/test-id.log").exists()
    assert client.put(app.portal_url("/v2/vllm/instances/test-id"),
                      json={"options": "--model acme/second-life"}).status_code == 201
    wait_for(lambda: b"Starting vLLM API server" in read().content)
    assert b"secret" not in read().content and b"acme/log-test" not in read().content
    write(None)  # a log already gone is no obstacle to a delete
    assert client.delete(app.portal_url("/v2/vllm/instances/test-id")).status_code == 200
