"""A throwaway Redis Cluster on this machine: N redis-server processes, one shard each.

``LocalRedisCluster(n).start()`` launches the servers on free ports in a
temporary directory, splits the 16384 slots between them (CLUSTER ADDSLOTSRANGE,
so one or two shards work too, which ``redis-cli --cluster create`` refuses),
joins them with CLUSTER MEET and waits for ``cluster_state:ok``. ``stop()``
kills them and removes the directory. Each server's pid is written under
``PID_DIR`` first, so servers a crashed run left behind are killed by the next
``start()``. ``standalone=True`` starts one plain server (no cluster) the same
way, for side-by-side measurements.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PID_DIR = Path(tempfile.gettempdir()) / f"sluicegate-redis-cluster-{os.getuid()}"
SLOTS = 16384


class ClusterUnavailable(Exception):
    """redis-server is missing or cannot run a cluster here."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def kill_leftovers() -> None:
    """Kill redis-servers a previous run started and never stopped (pid files under ``PID_DIR``)."""
    if not PID_DIR.is_dir():
        return
    for pid_file in PID_DIR.glob("*.pid"):
        try:
            pid = int(pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"redis-server" in cmdline:
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
        pid_file.unlink(missing_ok=True)


def cluster_support() -> str | None:
    """Why no cluster can be started here, or None when it can."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        return "redis-server and redis-cli are not installed"
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False).stdout
    version = out.split("v=")[1].split()[0] if "v=" in out else "0"
    if int(version.split(".")[0]) < 7:
        return f"redis-server {version} lacks CLUSTER ADDSLOTSRANGE (needs 7+)"
    return None


class LocalRedisCluster:
    def __init__(self, shards: int, *, standalone: bool = False) -> None:
        self.shards = 1 if standalone else shards
        self.standalone = standalone
        self.ports: list[int] = []
        self._bus_ports: list[int] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._dir: Path | None = None

    @property
    def pids(self) -> list[int]:
        """The redis-server processes, one per shard."""
        return [proc.pid for proc in self._procs]

    @property
    def url(self) -> str:
        """A URL naming the first node (a cluster client discovers the others)."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self, timeout_s: float = 20.0) -> LocalRedisCluster:
        reason = cluster_support()
        if reason is not None:
            raise ClusterUnavailable(reason)
        kill_leftovers()
        PID_DIR.mkdir(exist_ok=True)
        self._dir = Path(tempfile.mkdtemp(prefix="sg-redis-"))
        try:
            for _ in range(self.shards):
                self._launch()
            for port in self.ports:
                self._wait(port, lambda p: self._cli(p, "PING") == "PONG", timeout_s)
            if not self.standalone:
                self._form(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self) -> None:
        assert self._dir is not None
        port = _free_port()
        args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self._dir), "--logfile", str(self._dir / f"{port}.log")]
        if not self.standalone:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
            bus = _free_port()
            self._bus_ports.append(bus)
            args += ["--cluster-port", str(bus), "--cluster-node-timeout", "5000"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        (PID_DIR / f"{proc.pid}.pid").write_text(str(proc.pid))
        self._procs.append(proc)
        self.ports.append(port)

    def _form(self, timeout_s: float) -> None:
        per = SLOTS // self.shards
        for i, port in enumerate(self.ports):
            last = SLOTS - 1 if i == self.shards - 1 else (i + 1) * per - 1
            self._cli(port, "CLUSTER", "SET-CONFIG-EPOCH", str(i + 1))
            self._cli(port, "CLUSTER", "ADDSLOTSRANGE", str(i * per), str(last))
        for port, bus in zip(self.ports[1:], self._bus_ports[1:], strict=True):
            self._cli(self.ports[0], "CLUSTER", "MEET", "127.0.0.1", str(port), str(bus))

        def ready(port: int) -> bool:
            info = self._cli(port, "CLUSTER", "INFO")
            return "cluster_state:ok" in info and f"cluster_known_nodes:{self.shards}" in info

        for port in self.ports:
            self._wait(port, ready, timeout_s)

    @staticmethod
    def _cli(port: int, *command: str) -> str:
        done = subprocess.run(["redis-cli", "-p", str(port), *command], capture_output=True, text=True, timeout=10, check=False)
        return done.stdout.strip()

    @staticmethod
    def _wait(port: int, ready: object, timeout_s: float) -> None:
        assert callable(ready)
        deadline = time.monotonic() + timeout_s
        while not ready(port):
            if time.monotonic() > deadline:
                raise ClusterUnavailable(f"redis-server on port {port} did not become ready")
            time.sleep(0.05)

    def stop(self) -> None:
        for proc in self._procs:
            proc.kill()
        for proc in self._procs:
            proc.wait(timeout=10)
            (PID_DIR / f"{proc.pid}.pid").unlink(missing_ok=True)
        self._procs.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
