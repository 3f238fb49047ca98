"""GET /v2/vllm/instances/watch on the booted appliance, through Caddy: upstream's TestWatchAPIEndpoint,
TestEventBroadcaster and TestSentinelWatcher translated to HTTP, and our keep-alive and restart behaviour."""
from __future__ import annotations

import contextlib
import json
import time

import pytest

from tests.manager.test_swap import wait_for


@pytest.fixture
def api(fresh_appliance):
    with fresh_appliance.client(timeout=30) as client:
        yield fresh_appliance, client


@contextlib.contextmanager
def watching(app, client, since: int | None = None, *, keepalive: bool = False):
    """Yields next_event(): the next event of the stream (an empty line, with keepalive=True, is returned as None)."""
    params = {} if since is None else {"since": since}
    with client.stream("GET", app.portal_url("/v2/vllm/instances/watch"), params=params) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = response.iter_lines()

        def next_event():
            for line in lines:
                if line:
                    return json.loads(line)
                if keepalive:
                    return None
            raise AssertionError("the stream ended")
        yield next_event


def revision(app, client) -> int:
    return client.get(app.portal_url("/v2/vllm/instances"), params={"detail": "false"}).json()["revision"]


def test_without_since_every_instance_comes_first_as_created(api):
    """TestWatchAPIEndpoint.test_watch_endpoint_content_type, test_watch_without_since_sends_initial_state"""
    app, client = api
    current = client.get(app.portal_url("/v2/vllm/instances/vllm")).json()
    with watching(app, client) as next_event:
        first = next_event()
    assert first["type"] == "CREATED" and "revision" not in first
    assert first["object"]["instance_id"] == "vllm" and first["object"]["status"] == "running"
    assert first["object"]["revision"] == current["revision"] is not None


def test_created_stopped_deleted_with_sequential_revisions(api):
    """TestEventBroadcaster.test_publish_and_watch, test_publish_tracks_sequential_revisions;
    TestSentinelWatcher.test_sentinel_invokes_callback_on_exit (an engine that exits: STOPPED with its exit code)"""
    app, client = api
    url = app.portal_url("/v2/vllm/instances/doomed")
    with watching(app, client, revision(app, client)) as next_event:
        created = client.put(url, json={"options": "--model acme/fail-load-watch"}).json()
        events = [next_event(), next_event()]
        deleted = client.delete(url).json()
        events.append(next_event())
    assert [e["type"] for e in events] == ["CREATED", "STOPPED", "DELETED"]
    assert all(e["object"]["instance_id"] == "doomed" for e in events)
    shape = ("status", "instance_id", "revision", "options")
    assert {k: events[0]["object"][k] for k in shape} == {k: created[k] for k in shape}  # the answer's object
    assert events[1]["object"]["status"] == "stopped" and "exit_code" in events[1]["object"]
    assert events[2]["object"]["status"] == "stopped" and events[2]["object"] == deleted
    revisions = [e["object"]["revision"] for e in events]
    assert revisions == list(range(revisions[0], revisions[0] + 3)) and revisions[0] == created["revision"]


def test_an_explicit_delete_is_deleted_only(api):
    """TestSentinelWatcher.test_sentinel_cancelled_on_explicit_stop: deleting a running engine is no STOPPED"""
    app, client = api
    url = app.portal_url("/v2/vllm/instances/calm")
    assert client.put(url, json={"options": "--model acme/calm"}).status_code == 201
    wait_for(lambda: client.get(url).json()["ready"])
    with watching(app, client, revision(app, client)) as next_event:
        client.delete(url)
        event = next_event()
    assert event["type"] == "DELETED" and event["object"]["instance_id"] == "calm"


def test_since_resumes_after_that_revision(api):
    """TestWatchAPIEndpoint.test_watch_with_since_streams_events; TestEventBroadcaster.test_watch_since_revision"""
    app, client = api
    start = revision(app, client)
    for name in ("one", "two"):
        assert client.put(app.portal_url(f"/v2/vllm/instances/{name}"), json={"options": "--model acme/m"}).is_success
    with watching(app, client, start) as next_event:
        first, second = next_event(), next_event()
    assert [first["type"], second["type"]] == ["CREATED", "CREATED"] and "revision" not in first
    assert [first["object"]["instance_id"], second["object"]["instance_id"]] == ["one", "two"]
    assert first["object"]["revision"] == start + 1 and second["object"]["revision"] == start + 2
    with watching(app, client, start + 1) as next_event:
        assert next_event()["object"]["instance_id"] == "two"


def test_two_watchers_see_the_same_events(api):
    """TestEventBroadcaster.test_multiple_watchers"""
    app, client = api
    start = revision(app, client)
    with app.client(timeout=30) as other, watching(app, client, start) as a, watching(app, other, start) as b:
        client.put(app.portal_url("/v2/vllm/instances/shared"), json={"options": "--model acme/m"})
        client.delete(app.portal_url("/v2/vllm/instances/shared"))
        seen_a, seen_b = [a(), a()], [b(), b()]
    assert seen_a == seen_b and [e["type"] for e in seen_a] == ["CREATED", "DELETED"]


def test_instances_changed_through_our_own_api_are_events_too(api):
    """Ours: an instance stopped, started or created through /api is seen by the watch."""
    app, client = api
    with watching(app, client, revision(app, client)) as next_event:
        client.post(app.portal_url("/api/instances/vllm/stop"))
        stopped = next_event()
        client.post(app.portal_url("/api/instances/vllm/start"))
        started = next_event()
    assert (stopped["type"], stopped["object"]["status"]) == ("STOPPED", "stopped")
    assert (started["type"], started["object"]["status"]) == ("CREATED", "running")


def test_a_revision_no_longer_kept_is_410_and_revisions_survive_a_manager_restart(api):
    """TestEventBroadcaster.test_revision_too_old_raises (upstream's 410 Gone); ours: the counter is saved, the
    buffer is not, so a watcher from before the restart re-lists instead of missing events"""
    app, client = api
    gone = client.get(app.portal_url("/v2/vllm/instances/watch"), params={"since": -1})
    assert gone.status_code == 410 and "no longer available" in gone.json()["detail"]
    assert client.put(app.portal_url("/v2/vllm/instances/kept"), json={"options": "--model acme/m"}).is_success
    before = revision(app, client)
    assert app.supervisorctl("restart", "manager").returncode == 0
    app.wait_portal()
    after = revision(app, client)
    assert after >= before
    stale = client.get(app.portal_url("/v2/vllm/instances/watch"), params={"since": before - 1})
    assert stale.status_code == 410 and str(after) in stale.json()["detail"]
    with watching(app, client, after) as next_event:
        client.delete(app.portal_url("/v2/vllm/instances/kept"))
        event = next_event()
    assert event["type"] == "DELETED" and event["object"]["revision"] == after + 1


def test_an_idle_watch_gets_an_empty_line_to_keep_it_open(api):
    """Ours: a blank line after 10 s without events (NDJSON parsers may skip empty lines); measured, bounded."""
    app, client = api
    with watching(app, client, revision(app, client), keepalive=True) as next_event:
        began = time.monotonic()
        assert next_event() is None
        assert 5 < time.monotonic() - began < 20
