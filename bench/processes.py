"""Server subprocesses for benchmarks: start, wait until they answer, pin, stop.

Each server runs in its own session (process group) so that stopping it also
stops anything it spawned, and only what this module started is ever signalled.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A loopback port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(url: str, body: bytes, headers: dict[str, str], timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def result_line(stdout: str, marker: str, program: str) -> dict[str, Any]:
    """The JSON object a benchmark tool printed after ``marker`` on a line of its own (wrk's hook, the C client)."""
    for line in stdout.splitlines():
        if line.startswith(marker):
            found: dict[str, Any] = json.loads(line[len(marker) :])
            return found
    raise RuntimeError(f"{program} printed no result line; its output was:\n{stdout[-2000:]}")


def _thread_ids(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return []


def child_pids(pid: int) -> list[int]:
    found: list[int] = []
    for tid in _thread_ids(pid):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
        except OSError:
            continue
        found += [int(c) for c in text.split()]
    return found


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` and its threads so far; 0 once it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime and stime are fields 14 and 15 of /proc/PID/stat (11 and 12 after the name).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def placement() -> tuple[set[int], set[int]] | None:
    """(a CPU for the load generator and the upstream, a CPU for the server under test), with two CPUs or more."""
    cpus = sorted(os.sched_getaffinity(0))
    return ({cpus[0]}, {cpus[-1]}) if len(cpus) >= 2 else None


def pin_tree(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` and of its descendants to ``cpus``."""
    for tid in _thread_ids(pid):
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            continue  # the thread ended meanwhile
    for child in child_pids(pid):
        pin_tree(child, cpus)


@dataclass
class Server:
    name: str
    argv: Sequence[str]
    log_path: Path
    cwd: Path
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        env = dict(os.environ)
        # children run outside the repository (their files land in a temp
        # directory) yet import the repository's packages
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                list(self.argv), cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def log_tail(self, limit: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def wait_ready(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float = 30.0) -> bytes:
        """Poll with a real request until it answers 200; return that answer."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; its log ends:\n{self.log_tail()}")
            try:
                status, answer = post(url, body, headers, timeout=5.0)
            except OSError as exc:
                last = str(exc)
            else:
                if status == 200:
                    return answer
                last = f"HTTP {status}: {answer[:300]!r}"
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not answer within {timeout_s:.0f}s ({last}); log:\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process and its threads so far."""
        return 0.0 if self.process is None else process_cpu_seconds(self.process.pid)

    def pin(self, cpus: set[int]) -> None:
        if self.process is not None and self.process.poll() is None:
            pin_tree(self.process.pid, cpus)

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        # the server leads its own process group, created by start()
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def fake_upstream(work: Path, port: int, chunks: int = 20) -> Server:
    """The fake upstream (``bench.fake_upstream``) on ``port``, streams of ``chunks`` chunks; not yet started."""
    argv = [sys.executable, "-m", "bench.fake_upstream", "--port", str(port), "--chunks", str(chunks)]
    return Server("upstream", argv, work / "upstream.log", work)
