"""An open-loop client in C (``bench/openloop.c``), built on first use, its figures read back as a :class:`Run`.

A fixed-rate benchmark's client must send each request when it is due, or its
own delays show up as the server's latency. A Python client sharing a CPU
with the fake upstream falls milliseconds behind and then sends in bursts; the
C client sleeps on a timer armed at the next due time, sends from a pre-built
request on a connection opened beforehand, and parses only enough of each
response to find its end, so it adds microseconds, not milliseconds.

The binary is compiled with gcc into a cache folder outside the repository
(``$XDG_CACHE_HOME/sluicegate-bench``, by default ``~/.cache/sluicegate-bench``),
named after a hash of its sources (``openloop.c``, ``openloop_http.c``,
``openloop_args.c`` and ``openloop.h``), so it is built again only when one of
them changes. It runs with this process's CPU affinity: a child process inherits
it, so a benchmark that pins itself pins its client too.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bench.processes import result_line

SOURCE = Path(__file__).with_name("openloop.c")
SOURCES = (SOURCE, SOURCE.with_name("openloop_http.c"), SOURCE.with_name("openloop_args.c"))  # compiled together
HEADER = SOURCE.with_name("openloop.h")
CFLAGS = ("-O2", "-Wall", "-Wextra", "-std=gnu11")
_MARKER = "OPENLOOP "


@dataclass
class Run:
    """One open-loop run: latencies in ms of the answered requests, and the failures."""

    latencies: list[float]
    errors: int
    late_ms: float  # how far behind schedule the client itself fell, at worst
    sent: int | None = None  # requests written out in full, where the client counts them

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class OpenloopMissing(RuntimeError):
    pass


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sluicegate-bench"


def binary_path() -> Path:
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in (*SOURCES, HEADER))).hexdigest()[:12]
    return cache_dir() / f"openloop-{digest}"


def build_openloop() -> Path:
    """The compiled client, compiled now if this version of the source has no binary yet."""
    binary = binary_path()
    if binary.exists():
        return binary
    gcc = shutil.which("gcc")
    if gcc is None:
        raise OpenloopMissing("gcc is not installed (the C open-loop client needs it); on Debian: apt-get install -y gcc")
    binary.parent.mkdir(parents=True, exist_ok=True)
    # built under a name of its own and renamed, so a concurrent build never runs a half-written file
    partial = binary.with_name(f"{binary.name}.{os.getpid()}.partial")
    command = [gcc, *CFLAGS, "-o", str(partial), *map(str, SOURCES)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"gcc could not build {SOURCE.name}:\n{done.stderr.strip()[-2000:]}")
    os.replace(partial, binary)
    return binary


def openloop_ready() -> bool:
    """Whether the C client is built or can be; if not, says why on stderr (a benchmark's ``main`` then returns 2)."""
    try:
        build_openloop()
    except (OpenloopMissing, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return False
    return True


def run_openloop(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    rate: float,
    duration_s: float,
    connections: int = 256,
    warmup: int = 64,
    timeout_s: float = 30.0,
) -> Run:
    """POST ``body`` to ``url`` at ``rate`` requests a second for ``duration_s``, open loop, each timed from when it was due.

    ``connections`` keep-alive connections are opened first, and ``warmup``
    requests sent at once and their answers discarded, before the first due
    time. Requests unanswered ``timeout_s`` after the last due time are
    errors. The client reads every response to its end however it is framed,
    chunked streams included.
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"the open-loop client speaks plain http only, not {url!r}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    binary = build_openloop()
    with tempfile.TemporaryDirectory(prefix="openloop-") as tmp:
        body_file, out = Path(tmp) / "body", Path(tmp) / "latencies"
        body_file.write_bytes(body)
        argv = [str(binary), "--host", parts.hostname, "--port", str(parts.port or 80), "--path", path]
        argv += ["--body-file", str(body_file), "--out", str(out)]
        for name, value in headers.items():
            argv += ["--header", f"{name}: {value}"]
        argv += ["--rate", repr(float(rate)), "--duration", repr(float(duration_s)), "--connections", str(connections)]
        argv += ["--warmup", str(warmup), "--timeout", repr(float(timeout_s))]
        limit = duration_s + 2 * timeout_s + 30  # the warm-up and the drain may each take up to timeout_s
        done = subprocess.run(argv, capture_output=True, text=True, timeout=limit, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"openloop exited with {done.returncode}: {done.stderr.strip()[-1000:]}")
        result = result_line(done.stdout, _MARKER, "openloop")
        latencies = [int(line) / 1000 for line in out.read_text().split()]
    return Run(latencies, result["errors"], result["late_us"] / 1000, result["sent"])
