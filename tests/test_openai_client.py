"""The official openai client against the API port, through Caddy, with the token as api_key."""
from __future__ import annotations

import time

import openai


def test_chat_completion(appliance):
    with appliance.client() as http:
        ai = openai.OpenAI(base_url=appliance.api_url("/v1"), api_key=appliance.token, http_client=http)
        reply = ai.chat.completions.create(model="acme/tiny-chat",
                                           messages=[{"role": "user", "content": "hello there"}], max_tokens=8)
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens > 0

def test_streamed_chat_completion_arrives_before_the_stream_ends(appliance):
    with appliance.client(timeout=30) as http:
        ai = openai.OpenAI(base_url=appliance.api_url("/v1"), api_key=appliance.token, http_client=http)
        started = time.monotonic()
        arrivals, pieces = [], []
        stream = ai.chat.completions.create(model="acme/tiny-chat", stream=True, max_tokens=40,
                                            messages=[{"role": "user", "content": "count slowly to forty " * 5}])
        for chunk in stream:
            arrivals.append(time.monotonic() - started)
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
    assert len(pieces) > 5
    # Caddy passes chunks through unbuffered: the first one is in hand well before the last.
    assert arrivals[0] < arrivals[-1] / 2, arrivals

def test_wrong_api_key_is_refused(appliance):
    with appliance.client(auth=False) as http:
        ai = openai.OpenAI(base_url=appliance.api_url("/v1"), api_key="not-the-token", http_client=http, max_retries=0)
        try:
            ai.models.list()
        except openai.AuthenticationError as exc:
            assert exc.status_code == 401
        else:
            raise AssertionError("a wrong api_key got through")
