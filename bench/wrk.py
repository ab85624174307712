"""Drive ``wrk`` with a generated Lua script and read its figures back as data.

The script sets the method, body and headers, and its ``done`` hook prints one
machine-readable line, so nothing depends on wrk's human-oriented text.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.processes import result_line

_MARKER = "WRK_RESULT "
_DONE_HOOK = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "%s{\\"requests\\":%d,\\"duration_us\\":%d,\\"p50_us\\":%.1f,\\"p99_us\\":%.1f,"
      .. "\\"non_2xx\\":%d,\\"socket_errors\\":%d}\\n",
    "MARKER", summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), e.status, e.connect + e.read + e.write + e.timeout))
end
""".replace("MARKER", _MARKER)


class WrkMissing(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def find_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkMissing("wrk is not installed; on Debian: apt-get install -y wrk")
    return path


def wrk_ready() -> bool:
    """Whether wrk is installed; if not, says so on stderr (a benchmark's ``main`` then returns 2)."""
    try:
        find_wrk()
    except WrkMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return False
    return True


def lua_string(text: str) -> str:
    """A Lua long-bracket literal that cannot be closed early by ``text``."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    # Lua drops a newline right after the opening bracket; this one, not the text's
    return f"[{eq}[\n{text}]{eq}]"


def lua_script(body: bytes, headers: dict[str, str]) -> str:
    lines = ['wrk.method = "POST"', f"wrk.body = {lua_string(body.decode())}"]
    lines += [f"wrk.headers[ {lua_string(k)} ] = {lua_string(v)}" for k, v in headers.items()]
    return "\n".join(lines) + "\n" + _DONE_HOOK


def parse_output(stdout: str) -> WrkResult:
    raw = result_line(stdout, _MARKER, "wrk")
    return WrkResult(
        requests=raw["requests"],
        duration_s=raw["duration_us"] / 1e6,
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        errors=raw["non_2xx"] + raw["socket_errors"],
    )


def run_wrk(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    duration_s: int,
    concurrency: int,
    cpus: set[int] | None = None,
) -> WrkResult:
    """One wrk thread, ``concurrency`` keep-alive connections, ``duration_s`` seconds."""
    wrk = find_wrk()
    with tempfile.TemporaryDirectory(prefix="wrk-") as tmp:
        script = Path(tmp) / "request.lua"
        script.write_text(lua_script(body, headers))
        argv = [wrk, "-t1", f"-c{concurrency}", f"-d{max(duration_s, 1)}s", "--timeout", "5s"]
        argv += ["--latency", "-s", str(script), url]
        taskset = shutil.which("taskset")
        if cpus and taskset:
            argv = [taskset, "-c", ",".join(map(str, sorted(cpus))), *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}: {done.stderr.strip()[-500:]}")
    return parse_output(done.stdout)
