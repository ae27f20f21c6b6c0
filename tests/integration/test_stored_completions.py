"""Stored chat completions (``store: true``) through the official client: store (streamed or not),
list and filter, retrieve, update metadata, list messages, delete; bad input is a clear error."""

from __future__ import annotations

import httpx
import openai
import pytest

from tuneloop.config import Settings
from tuneloop.models import Catalog

from helpers import ServerProcess


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_model_dir):
    home = tmp_path_factory.mktemp("stored") / "home"
    Catalog(Settings(home=home)).add("tiny-llama", tiny_model_dir)
    server = ServerProcess(home, "--no-worker").wait_ready()
    yield server.client()
    server.stop()


def ask(client, content: str, **kw):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}]
    return client.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=5, temperature=0, **kw)


def test_stored_completions_round_trip(client):
    plain = ask(client, "not stored")
    kept = ask(client, "first", store=True, metadata={"task": "wine", "run": "1"})
    other = ask(client, "second", store=True, metadata={"task": "beer"})
    chunks = list(ask(client, "streamed", store=True, metadata={"task": "wine"}, stream=True))
    streamed_id, streamed_text = chunks[0].id, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    listed = client.chat.completions.list(model="tiny-llama")
    assert [c.id for c in listed.data] == [kept.id, other.id, streamed_id]  # oldest first; plain not stored
    assert plain.id not in {c.id for c in listed.data}
    wine = client.chat.completions.list(metadata={"task": "wine"})
    assert [c.id for c in wine.data] == [kept.id, streamed_id]
    assert client.chat.completions.list(model="no-such-model").data == []
    page = client.chat.completions.list(limit=1, order="desc")
    assert [c.id for c in page.data] == [streamed_id] and page.has_more
    assert [c.id for c in client.chat.completions.list(after=kept.id).data] == [other.id, streamed_id]

    got = client.chat.completions.retrieve(kept.id)
    assert got.choices[0].message.content == kept.choices[0].message.content and got.usage == kept.usage
    assert got.metadata == {"task": "wine", "run": "1"}
    assert client.chat.completions.retrieve(streamed_id).choices[0].message.content == streamed_text

    updated = client.chat.completions.update(kept.id, metadata={"task": "cider"})
    assert updated.metadata == {"task": "cider"}
    assert [c.id for c in client.chat.completions.list(metadata={"task": "wine"}).data] == [streamed_id]

    messages = client.chat.completions.messages.list(kept.id)
    assert [(m.role, m.content) for m in messages.data] == [("system", "Be brief."), ("user", "first")]
    assert messages.data[0].id == f"{kept.id}-0"

    deleted = client.chat.completions.delete(other.id)
    assert deleted.deleted and deleted.object == "chat.completion.deleted"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(other.id)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.delete(other.id)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.messages.list("chatcmpl-nope")


def test_bad_metadata_is_refused_and_nothing_is_stored(client):
    before = len(client.chat.completions.list(limit=100).data)
    for metadata, param in (({"task": 5}, "metadata.task"), ({f"k{i}": "v" for i in range(17)}, "metadata")):
        response = httpx.post(
            f"{client.base_url}chat/completions", headers={"authorization": f"Bearer {client.api_key}"},
            json={"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "store": True,
                  "metadata": metadata, "max_tokens": 2},
        )  # fmt: skip
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text
    assert len(client.chat.completions.list(limit=100).data) == before
