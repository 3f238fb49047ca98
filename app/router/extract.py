"""The one thing the router reads from a request: its `model`.

- A JSON body: its top-level `model` (a string).
- A multipart form (the audio routes: /v1/audio/transcriptions, /v1/audio/translations): the form field `model`.
- Anything else (a GET, an empty body, a body without `model`): None, and the request goes to the default instance.
Nothing else of the body is looked at or changed.
"""
from __future__ import annotations

import json
from email.message import Message
from email.parser import BytesHeaderParser

MAX_MODEL = 512  # a longer `model` is no name of ours


def _content_type(header: str) -> tuple[str, dict[str, str]]:
    message = Message()
    message["content-type"] = header
    params = {k.lower(): v for k, v in (message.get_params() or [])[1:]}
    return message.get_content_type(), params


def from_json(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) and 0 < len(model) <= MAX_MODEL else None


def from_multipart(body: bytes, boundary: str) -> str | None:
    """The form field `model`: the parts are scanned by their boundary; only the parts' headers are parsed."""
    delimiter = b"--" + boundary.encode("latin-1")
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break  # the closing delimiter
        head, sep, value = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        headers = BytesHeaderParser().parsebytes(head.lstrip(b"\r\n") + b"\r\n\r\n")
        disposition = Message()
        disposition["content-disposition"] = headers.get("content-disposition", "")
        if disposition.get_param("name", header="content-disposition") != "model":
            continue
        try:
            model = value.removesuffix(b"\r\n").decode()
        except UnicodeDecodeError:
            return None
        return model if 0 < len(model) <= MAX_MODEL else None
    return None


def model_of(content_type: str | None, body: bytes) -> str | None:
    """The request's model, or None (then the default instance answers it)."""
    if not body:
        return None
    if content_type and content_type.startswith("application/json"):
        return from_json(body)  # the common case, without parsing the header
    kind, params = _content_type(content_type or "")
    if kind == "multipart/form-data":
        return from_multipart(body, params["boundary"]) if params.get("boundary") else None
    if kind == "application/json" or kind.endswith("+json") or body[:1] in (b"{", b" ", b"\n", b"\r", b"\t"):
        return from_json(body)
    return None


def with_model(content_type: str | None, body: bytes, model: str) -> bytes:
    """The body with its `model` replaced (an alias becomes the name the engine serves); other fields unchanged."""
    kind, params = _content_type(content_type or "")
    if kind == "multipart/form-data":
        delimiter = b"--" + params["boundary"].encode("latin-1")
        parts = body.split(delimiter)
        for i, part in enumerate(parts[1:], 1):
            head, sep, value = part.partition(b"\r\n\r\n")
            headers = BytesHeaderParser().parsebytes(head.lstrip(b"\r\n") + b"\r\n\r\n")
            disposition = Message()
            disposition["content-disposition"] = headers.get("content-disposition", "")
            if sep and disposition.get_param("name", header="content-disposition") == "model":
                parts[i] = head + sep + model.encode() + (b"\r\n" if value.endswith(b"\r\n") else b"")
                return delimiter.join(parts)
        return body
    data = json.loads(body)
    data["model"] = model
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
