"""The embedded file store: a tenant never sees, reads or deletes another tenant's files; files appear whole or not at all."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.errors import NotFound, PayloadTooLarge
from router.files_store_local import LocalFileStore


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def read(store: LocalFileStore, tenant: str, file_id: str) -> bytes:
    return b"".join([chunk async for chunk in store.content(tenant, file_id)])


async def test_a_file_is_its_tenants_only(tmp_path: Path) -> None:
    store = LocalFileStore(str(tmp_path))
    made = await store.create("acme", filename="in.jsonl", purpose="batch", content=chunks(b"hello ", b"world"))
    assert (made.bytes, made.filename, made.purpose, made.object, made.expires_at) == (11, "in.jsonl", "batch", "file", None)
    assert made.id.startswith("file-")
    assert await store.get("acme", made.id) == made
    assert await read(store, "acme", made.id) == b"hello world"
    # another tenant: absent, whatever it tries
    assert await store.get("globex", made.id) is None
    with pytest.raises(NotFound):
        await read(store, "globex", made.id)
    assert await store.page("globex", purpose=None, after=None, limit=10, order="desc") == ([], False)
    assert not await store.delete("globex", made.id)
    assert await read(store, "acme", made.id) == b"hello world"
    assert await store.delete("acme", made.id)
    assert await store.get("acme", made.id) is None and not await store.delete("acme", made.id)


async def test_tenant_ids_that_look_like_paths_stay_apart(tmp_path: Path) -> None:
    store = LocalFileStore(str(tmp_path))
    made = await store.create("a/b", filename="x", purpose="user_data", content=chunks(b"1"))
    assert await store.get("a", made.id) is None and await store.get("a/b", made.id) == made
    assert not any(p.name == "b" for p in tmp_path.rglob("*"))


async def test_ids_that_are_not_file_ids_never_reach_the_disk(tmp_path: Path) -> None:
    (tmp_path / "secret.json").write_text("{}")
    store = LocalFileStore(str(tmp_path))
    for bad in ("../../secret", "file-../x", "file-a/b", "", "file-" + "x" * 100):
        assert await store.get("acme", bad) is None
        assert not await store.delete("acme", bad)
        with pytest.raises(NotFound):
            await read(store, "acme", bad)


async def test_a_failed_upload_leaves_nothing(tmp_path: Path) -> None:
    store = LocalFileStore(str(tmp_path))

    async def too_big() -> AsyncIterator[bytes]:
        yield b"partial"
        raise PayloadTooLarge("too large")

    with pytest.raises(PayloadTooLarge):
        await store.create("acme", filename="x", purpose="batch", content=too_big())
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert await store.page("acme", purpose=None, after=None, limit=10, order="asc") == ([], False)


async def test_pages_filter_by_purpose_and_follow_the_cursor(tmp_path: Path) -> None:
    store = LocalFileStore(str(tmp_path))
    made = [await store.create("acme", filename=f"{i}", purpose="batch" if i % 2 else "user_data", content=chunks(b"x")) for i in range(6)]
    batch_ids = [f.id for f in made if f.purpose == "batch"]
    files, more = await store.page("acme", purpose="batch", after=None, limit=2, order="asc")
    assert [f.id for f in files] == batch_ids[:2] and more
    files, more = await store.page("acme", purpose="batch", after=files[-1].id, limit=2, order="asc")
    assert [f.id for f in files] == batch_ids[2:] and not more
    files, _ = await store.page("acme", purpose=None, after=None, limit=10, order="desc")
    assert [f.id for f in files] == [f.id for f in reversed(made)]
    assert (await store.page("acme", purpose=None, after="file-unknown", limit=10, order="desc")) == ([], False)


async def test_an_expired_file_is_gone(tmp_path: Path) -> None:
    now = [1000.0]
    store = LocalFileStore(str(tmp_path), clock=lambda: now[0])
    made = await store.create("acme", filename="x", purpose="batch", content=chunks(b"x"), expires_at=1100)
    assert await store.get("acme", made.id) == made
    now[0] = 1100.0
    assert await store.get("acme", made.id) is None
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


async def test_a_given_id_replaces_the_file(tmp_path: Path) -> None:
    store = LocalFileStore(str(tmp_path))
    first = await store.create("acme", filename="out", purpose="batch_output", content=chunks(b"one"), file_id="file-fixed")
    again = await store.create("acme", filename="out", purpose="batch_output", content=chunks(b"two!"), file_id="file-fixed")
    assert first.id == again.id == "file-fixed" and again.bytes == 4
    assert await read(store, "acme", "file-fixed") == b"two!"
    assert len((await store.page("acme", purpose=None, after=None, limit=10, order="asc"))[0]) == 1
