from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from router.config_watch import FileWatcher

DEBOUNCE_S = 0.05
POLL_S = 0.01
# Long enough for a change to be seen, settled and read: used only to show that nothing fired.
QUIET_S = 0.25
INITIAL = b"deployments: []\n"


class Recorder:
    def __init__(self, fail_first: int = 0) -> None:
        self.calls: list[bytes] = []
        self.fired = asyncio.Event()
        self._fail_first = fail_first

    async def __call__(self, data: bytes) -> None:
        self.calls.append(data)
        self.fired.set()
        if len(self.calls) <= self._fail_first:
            raise ValueError("rejected " + data.decode())

    async def wait_for(self, count: int, timeout_s: float = 3.0) -> None:
        """Bounded wait until ``count`` calls have been made."""
        async with asyncio.timeout(timeout_s):
            while len(self.calls) < count:
                self.fired.clear()
                await self.fired.wait()


Watch = Callable[..., Awaitable[tuple[FileWatcher, Recorder]]]


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "sluicegate.yaml"
    path.write_bytes(INITIAL)
    return path


@pytest.fixture
async def watch(config_path: Path) -> AsyncIterator[Watch]:
    watchers: list[FileWatcher] = []

    async def make(recorder: Recorder | None = None, debounce_s: float = DEBOUNCE_S) -> tuple[FileWatcher, Recorder]:
        recorder = recorder or Recorder()
        watcher = FileWatcher(config_path, recorder, debounce_s=debounce_s, poll_s=POLL_S)
        await watcher.start()
        watchers.append(watcher)
        return watcher, recorder

    yield make
    for watcher in watchers:
        await watcher.close()


def touch_later(path: Path) -> None:
    """A new mtime, same content: what `touch` or a save without edits does."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


async def test_start_does_not_fire_for_the_content_already_loaded(config_path: Path, watch: Watch) -> None:
    _, recorder = await watch()
    touch_later(config_path)
    await asyncio.sleep(QUIET_S)
    assert recorder.calls == []
    config_path.write_bytes(b"edited: 1\n")
    await recorder.wait_for(1)
    assert recorder.calls == [b"edited: 1\n"]


async def test_an_in_place_write_fires_once_with_the_new_bytes(config_path: Path, watch: Watch) -> None:
    _, recorder = await watch()
    config_path.write_bytes(b"edited: 1\n")
    await recorder.wait_for(1)
    await asyncio.sleep(QUIET_S)
    assert recorder.calls == [b"edited: 1\n"]


async def test_a_temp_file_renamed_over_the_config_fires(config_path: Path, watch: Watch) -> None:
    _, recorder = await watch()
    temp = config_path.with_name(".sluicegate.yaml.swp")
    temp.write_bytes(b"edited: vim\n")
    os.replace(temp, config_path)
    await recorder.wait_for(1)
    assert recorder.calls == [b"edited: vim\n"]


async def test_delete_then_recreate_fires_once_and_the_gap_is_no_error(
    config_path: Path, watch: Watch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sluicegate.config")
    _, recorder = await watch()
    config_path.unlink()
    await asyncio.sleep(DEBOUNCE_S * 3)
    config_path.write_bytes(b"recreated: 1\n")
    await recorder.wait_for(1)
    await asyncio.sleep(QUIET_S)
    assert recorder.calls == [b"recreated: 1\n"]
    assert [record.levelname for record in caplog.records] == []


async def test_rapid_writes_within_the_debounce_window_fire_once_with_the_final_content(config_path: Path, watch: Watch) -> None:
    # A wider window than the others, so that the pauses between writes stay well inside it on a busy machine.
    _, recorder = await watch(debounce_s=0.2)
    for step in range(1, 6):
        config_path.write_bytes(b"step: %d\n" % step + b"#" * step)
        await asyncio.sleep(POLL_S * 2)
    await recorder.wait_for(1)
    await asyncio.sleep(QUIET_S)
    assert recorder.calls == [b"step: 5\n#####"]


async def test_touching_after_a_change_does_not_fire_again(config_path: Path, watch: Watch) -> None:
    _, recorder = await watch()
    config_path.write_bytes(b"edited: 1\n")
    await recorder.wait_for(1)
    touch_later(config_path)
    await asyncio.sleep(QUIET_S)
    assert recorder.calls == [b"edited: 1\n"]


async def test_a_failing_handler_is_logged_by_type_and_later_changes_still_fire(
    config_path: Path, watch: Watch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sluicegate.config")
    _, recorder = await watch(Recorder(fail_first=1))
    config_path.write_bytes(b"secret: broken\n")
    await recorder.wait_for(1)
    # The rejected content counts as seen: saving it again unchanged does not fire.
    touch_later(config_path)
    await asyncio.sleep(QUIET_S)
    assert recorder.calls == [b"secret: broken\n"]
    config_path.write_bytes(b"fixed: 1\n")
    await recorder.wait_for(2)
    assert recorder.calls == [b"secret: broken\n", b"fixed: 1\n"]
    assert "ValueError" in caplog.text
    assert "broken" not in caplog.text


async def test_an_unreadable_file_is_logged_and_read_again_on_its_next_change(
    config_path: Path, watch: Watch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sluicegate.config")
    _, recorder = await watch()
    # A directory where the file was: stat succeeds, reading fails (even as root, unlike a chmod).
    config_path.unlink()
    config_path.mkdir()
    async with asyncio.timeout(3):
        while "could not be read" not in caplog.text:
            await asyncio.sleep(POLL_S)
    assert os.strerror(errno.EISDIR) in caplog.text and str(config_path) in caplog.text
    config_path.rmdir()
    config_path.write_bytes(b"readable: 1\n")
    await recorder.wait_for(1)
    assert recorder.calls == [b"readable: 1\n"]


async def test_close_stops_watching(config_path: Path, watch: Watch) -> None:
    watcher, recorder = await watch()
    await watcher.close()
    config_path.write_bytes(b"edited: after close\n")
    await asyncio.sleep(QUIET_S)
    assert recorder.calls == []
