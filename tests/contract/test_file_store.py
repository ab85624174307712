"""One behaviour for both file stores: the local directory and an S3 bucket (moto's server, signatures checked).

Below the contract: S3-only behaviour (multipart uploads, what a failed
upload leaves, credentials and an unreachable server).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from core.config import Config, ConfigError
from core.config_check import decode_config
from core.errors import NotFound, PayloadTooLarge
from router.files_store import FileStore, FileStoreUnavailable
from router.files_store_local import LocalFileStore
from router.files_store_s3 import S3FileStore, s3_client
from router.state_batches import open_file_store
from tests.fakes.s3_server import S3Server, start_s3_server

MIB = 1024 * 1024
SECRET_ENV = "SLUICEGATE_TEST_S3_SECRET"
StoreFactory = Callable[..., FileStore]


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_s3_server(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


def _s3_config(server: S3Server, **overrides: object) -> Config:
    return msgspec.convert({"state": {"files": "s3", "s3": server.state(**overrides)}}, Config)


@pytest.fixture
def s3_prefix() -> str:
    return f"test-{secrets.token_hex(4)}/"


@pytest.fixture(params=["local", "s3"])
def make_store(
    request: pytest.FixtureRequest, tmp_path: Path, s3_server: S3Server, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> StoreFactory:
    """``make_store(clock=...)``: a fresh, empty store of the kind under test."""
    if request.param == "local":
        return lambda clock=time.time: LocalFileStore(str(tmp_path), clock=clock)
    monkeypatch.setenv(SECRET_ENV, s3_server.secret_access_key)
    return lambda clock=time.time: _s3_store(s3_server, s3_prefix, clock)


def _s3_store(server: S3Server, prefix: str, clock: Callable[[], float] = time.time) -> S3FileStore:
    """A store on the test server's bucket, in parts of S3's smallest size."""
    config = _s3_config(server, prefix=prefix, part_bytes=5 * MIB)
    assert config.state.s3 is not None
    return S3FileStore(s3_client(config.state.s3), prefix=prefix, part_bytes=5 * MIB, clock=clock)


@pytest.fixture
async def store(make_store: StoreFactory) -> AsyncIterator[FileStore]:
    made = make_store()
    await made.start()
    yield made
    await made.close()


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def read(store: FileStore, tenant: str, file_id: str) -> bytes:
    return b"".join([chunk async for chunk in store.content(tenant, file_id)])


async def test_a_file_is_its_tenants_only(store: FileStore) -> None:
    made = await store.create("acme", filename="in.jsonl", purpose="batch", content=chunks(b"hello ", b"world"))
    assert (made.bytes, made.filename, made.purpose, made.object, made.expires_at) == (11, "in.jsonl", "batch", "file", None)
    assert made.id.startswith("file-")
    assert await store.get("acme", made.id) == made
    assert await read(store, "acme", made.id) == b"hello world"
    assert await store.get("globex", made.id) is None
    with pytest.raises(NotFound) as refused:
        await read(store, "globex", made.id)
    assert refused.value.message == f"No such File object: {made.id}." and refused.value.code == "file_not_found"
    assert await store.page("globex", purpose=None, after=None, limit=10, order="desc") == ([], False)
    assert not await store.delete("globex", made.id)
    assert await read(store, "acme", made.id) == b"hello world"


async def test_tenant_ids_that_look_like_paths_stay_apart(store: FileStore) -> None:
    made = await store.create("a/b", filename="x", purpose="user_data", content=chunks(b"1"))
    assert await store.get("a", made.id) is None and await store.get("a/b", made.id) == made
    assert await store.page("a", purpose=None, after=None, limit=10, order="asc") == ([], False)


async def test_missing_files_and_ids_that_are_not_file_ids_are_not_found(store: FileStore) -> None:
    for bad in ("file-missing", "../../secret", "file-../x", "file-a/b", "", "file-" + "x" * 100):
        assert await store.get("acme", bad) is None
        assert not await store.delete("acme", bad)
        with pytest.raises(NotFound) as refused:
            await read(store, "acme", bad)
        assert refused.value.message.startswith("No such File object: ")


async def test_delete_removes_it_once(store: FileStore) -> None:
    made = await store.create("acme", filename="x", purpose="batch", content=chunks(b"x"))
    assert await store.delete("acme", made.id)
    assert await store.get("acme", made.id) is None and not await store.delete("acme", made.id)
    with pytest.raises(NotFound):
        await read(store, "acme", made.id)
    assert await store.page("acme", purpose=None, after=None, limit=10, order="desc") == ([], False)


async def test_a_failed_upload_leaves_nothing(store: FileStore) -> None:
    async def too_big() -> AsyncIterator[bytes]:
        yield b"partial" * MIB  # past a part, for the store that uploads in parts
        raise PayloadTooLarge("too large")

    with pytest.raises(PayloadTooLarge):
        await store.create("acme", filename="x", purpose="batch", content=too_big())
    assert await store.page("acme", purpose=None, after=None, limit=10, order="asc") == ([], False)


async def test_pages_follow_the_cursor_both_ways_and_filter_by_purpose(store: FileStore) -> None:
    made = [await store.create("acme", filename=f"{i}", purpose="batch" if i % 2 else "user_data", content=chunks(b"x")) for i in range(7)]
    batch_ids = [f.id for f in made if f.purpose == "batch"]
    files, more = await store.page("acme", purpose="batch", after=None, limit=2, order="asc")
    assert [f.id for f in files] == batch_ids[:2] and more
    files, more = await store.page("acme", purpose="batch", after=files[-1].id, limit=2, order="asc")
    assert [f.id for f in files] == batch_ids[2:] and not more
    seen: list[str] = []
    after: str | None = None
    while True:
        files, more = await store.page("acme", purpose=None, after=after, limit=3, order="desc")
        seen += [f.id for f in files]
        if not more:
            break
        after = files[-1].id
    assert seen == [f.id for f in reversed(made)]
    files, more = await store.page("acme", purpose=None, after=made[5].id, limit=10, order="asc")
    assert [f.id for f in files] == [made[6].id] and not more
    assert await store.page("acme", purpose=None, after="file-unknown", limit=10, order="desc") == ([], False)
    assert await store.page("acme", purpose="batch", after=made[-1].id, limit=1, order="asc") == ([], False)


async def test_a_multi_megabyte_file_streams_in_chunks(store: FileStore) -> None:
    block = os.urandom(MIB)
    parts = [bytes([i]) + block[1:] for i in range(12)]  # 12 MiB: three parts of S3's multipart upload
    made = await store.create("acme", filename="big.jsonl", purpose="batch", content=chunks(*parts))
    assert made.bytes == 12 * MIB and (await store.get("acme", made.id)) == made
    digest = hashlib.sha256()
    count = 0
    async for chunk in store.content("acme", made.id):
        assert len(chunk) <= 2 * MIB
        digest.update(chunk)
        count += 1
    assert count >= 6 and digest.digest() == hashlib.sha256(b"".join(parts)).digest()


async def test_an_expired_file_is_gone(make_store: StoreFactory) -> None:
    now = [1000.0]
    store = make_store(clock=lambda: now[0])
    made = await store.create("acme", filename="x", purpose="batch", content=chunks(b"x"), expires_at=1100)
    kept = await store.create("acme", filename="y", purpose="batch", content=chunks(b"y"))
    assert await store.get("acme", made.id) == made
    now[0] = 1100.0
    assert await store.get("acme", made.id) is None
    with pytest.raises(NotFound):
        await read(store, "acme", made.id)
    assert await store.page("acme", purpose=None, after=None, limit=10, order="asc") == ([kept], False)
    await store.close()


async def test_a_given_id_replaces_the_file(store: FileStore) -> None:
    first = await store.create("acme", filename="out", purpose="batch_output", content=chunks(b"one"), file_id="file-fixed")
    again = await store.create("acme", filename="out", purpose="batch_output", content=chunks(b"two!"), file_id="file-fixed")
    assert first.id == again.id == "file-fixed" and again.bytes == 4
    assert await read(store, "acme", "file-fixed") == b"two!"
    files, more = await store.page("acme", purpose=None, after=None, limit=10, order="asc")
    assert files == [again] and not more
    # the same id under another tenant is another file
    other = await store.create("globex", filename="o", purpose="batch_output", content=chunks(b"3"), file_id="file-fixed")
    assert await read(store, "acme", "file-fixed") == b"two!" and await read(store, "globex", "file-fixed") == b"3"
    assert other.bytes == 1


async def test_an_empty_file_is_a_file(store: FileStore) -> None:
    made = await store.create("acme", filename="empty", purpose="user_data", content=chunks())
    assert made.bytes == 0 and await read(store, "acme", made.id) == b""


# --- S3 only ----------------------------------------------------------------------------


async def test_s3_keeps_each_file_under_its_tenants_prefix_and_leaves_no_upload_behind(
    s3_server: S3Server, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, s3_server.secret_access_key)
    store = _s3_store(s3_server, s3_prefix)

    async def fails_after_two_parts() -> AsyncIterator[bytes]:
        yield os.urandom(11 * MIB)
        raise PayloadTooLarge("too large")

    big = await store.create("acme", filename="big", purpose="batch", content=chunks(os.urandom(11 * MIB)))
    with pytest.raises(PayloadTooLarge):
        await store.create("acme", filename="x", purpose="batch", content=fails_after_two_parts())
    keys = s3_server.keys(s3_prefix)
    digest = hashlib.sha256(b"acme").hexdigest()[:40]
    assert all(k.startswith(f"{s3_prefix}files/{digest}/") for k in keys)
    assert sorted(k.split("/")[3] for k in keys) == ["asc", "data", "desc", "meta"]  # one file: no part of the failed one
    assert not [k for k in s3_server.multipart_uploads() if k.startswith(s3_prefix)]
    assert await store.delete("acme", big.id)
    assert s3_server.keys(s3_prefix) == []
    await store.close()


async def test_s3_requests_are_signed_as_aws_checks_them(s3_server: S3Server, s3_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, s3_server.secret_access_key)
    store = _s3_store(s3_server, s3_prefix)
    data = os.urandom(6 * MIB)
    with s3_server.checking_signatures():
        made = await store.create("acme", filename="in.jsonl", purpose="batch", content=chunks(data[: 3 * MIB], data[3 * MIB :]))
        assert await store.get("acme", made.id) == made
        assert await read(store, "acme", made.id) == data
        assert await store.delete("acme", made.id)
    await store.close()


async def test_s3_errors_are_503_and_never_show_a_credential(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-" + secrets.token_hex(16)
    monkeypatch.setenv(SECRET_ENV, wrong)
    stores = [open_file_store(_s3_config(s3_server))]  # a secret the server does not know: every signature is refused
    monkeypatch.setenv(SECRET_ENV, s3_server.secret_access_key)
    stores += [
        open_file_store(_s3_config(s3_server, endpoint_url="http://127.0.0.1:9", timeout_s=1.0)),  # nothing listens
        open_file_store(_s3_config(s3_server, bucket="no-such-bucket")),
    ]
    caplog.set_level(logging.DEBUG)
    with s3_server.checking_signatures():
        for store in stores:
            for call in (
                store.get("acme", "file-x"),
                store.create("acme", filename="x", purpose="batch", content=chunks(b"x")),
                store.delete("acme", "file-x"),
            ):
                started = time.monotonic()
                with pytest.raises(FileStoreUnavailable) as refused:
                    await call
                assert refused.value.status == 503 and time.monotonic() - started < 10
                assert wrong not in str(refused.value) and s3_server.secret_access_key not in str(refused.value)
            await store.close()
    logged = caplog.text
    assert "S3 " in logged and "SignatureDoesNotMatch" in logged and "NoSuchBucket" in logged
    for secret in (wrong, s3_server.secret_access_key):
        assert secret not in logged


def test_config_check_names_what_s3_lacks(tmp_path: Path) -> None:
    def check(state: str) -> str:
        with pytest.raises(ConfigError) as refused:
            decode_config(f"state:\n{state}".encode(), str(tmp_path / "gw.yaml"))
        return str(refused.value)

    assert "key `state.s3`: required when `state.files` is 's3'" in check("  files: s3\n")
    lacking = check("  files: s3\n  s3: {bucket: bkt}\n")
    assert "key `state.s3.access_key_id`" in lacking and "key `state.s3.secret_access_key`" in lacking
    assert "key `state.s3.bucket`" in check("  files: s3\n  s3: {access_key_id: a, secret_access_key: {env: X}}\n")
    assert "key `state.s3.secret_access_key`" in check("  files: s3\n  s3: {bucket: bkt, access_key_id: a, secret_access_key: plain}\n")
    assert "key `state.s3.part_bytes`" in check("  files: s3\n  s3: {bucket: bkt, part_bytes: 1024}\n")
    assert "key `state.postgres_dsn`: required when `state.batches` is 'postgres'" in check("  batches: postgres\n")
    ok = decode_config(b"state:\n  files: s3\n  s3: {bucket: bkt, access_key_id: a, secret_access_key: {env: X}}\n", "gw.yaml")
    assert ok.state.s3 is not None and ok.state.s3.path_style is False


def test_an_unset_secret_names_its_key_not_a_value(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    with pytest.raises(ConfigError) as refused:
        open_file_store(_s3_config(s3_server))
    assert str(refused.value) == f"key `state.s3.secret_access_key`: environment variable {SECRET_ENV} is not set"
