"""The hashed lock files agree with what they lock.

scripts/lock.sh writes requirements/*.txt; scripts/install.sh installs them with
--require-hashes --no-deps, so whatever a lock lacks is simply not installed.
These tests fail when pyproject.toml (or a requirements/*.in file) and its lock
disagree: a requirement with no pin, or a pin that no longer satisfies it; an
entry with no sha256; an entry nothing asks for any more; a package
requirements/excludes.txt keeps out that crept in. The fix is `bash
scripts/lock.sh`.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements"
PYPROJECT = REQUIREMENTS.parent / "pyproject.toml"

_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})\b")
# A `# via` annotation naming a requirements file (`-r x.in`, `-c lock.txt`) or
# the project itself (`sluicegate (pyproject.toml)`) rather than a package.
_INPUT = re.compile(r"^-[rc] \S+$|\(pyproject\.toml\)$")


@dataclass(frozen=True)
class Pin:
    version: Version
    hashes: tuple[str, ...]
    via: frozenset[str]  # canonical names of the locked packages that ask for it


def parse_lock(text: str) -> dict[NormalizedName, Pin]:
    """uv's requirements.txt output: `name==version \\`, its hashes, then `# via` lines."""
    pins: dict[NormalizedName, Pin] = {}
    for entry in re.split(r"\n(?=\S)", text):
        head, _, rest = entry.partition("\n")
        if not head or head.startswith("#"):
            continue
        req = Requirement(head.rstrip(" \\"))
        (spec,) = req.specifier
        assert spec.operator == "==", f"{head!r} is not a pin"
        via = (re.sub(r"^#\s*(via\b)?\s*", "", line.strip()) for line in rest.splitlines() if "#" in line)
        parents = frozenset(canonicalize_name(v) for v in via if v and not _INPUT.search(v))
        pins[canonicalize_name(req.name)] = Pin(Version(spec.version), tuple(_HASH.findall(rest)), parents)
    return pins


def problems(wanted: Iterable[str], pins: Mapping[NormalizedName, Pin], excluded: set[NormalizedName]) -> list[str]:
    """Everything on which `pins` and the requirements in `wanted` disagree."""
    found: list[str] = []
    roots: set[NormalizedName] = set()
    for line in wanted:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if name in excluded:
            continue
        pin = pins.get(name)
        if pin is None:
            found.append(f"{line}: not locked")
        elif not req.specifier.contains(pin.version, prereleases=True):
            found.append(f"{line}: locked at {pin.version}")
        roots.add(name)
    for name, pin in sorted(pins.items()):
        if not pin.hashes:
            found.append(f"{name}: no sha256")
        if name in excluded:
            found.append(f"{name}: locked, though requirements/excludes.txt keeps it out")
    found.extend(f"{name}: locked, but nothing asks for it" for name in sorted(set(pins) - _reachable(roots, pins)))
    return found


def _reachable(roots: set[NormalizedName], pins: Mapping[NormalizedName, Pin]) -> set[NormalizedName]:
    seen = set(roots)
    grew = True
    while grew:
        more = {name for name, pin in pins.items() if name not in seen and pin.via & seen}
        seen |= more
        grew = bool(more)
    return seen


def _pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text())


def _project_requirements() -> list[str]:
    project = _pyproject()["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]
    return [*project["dependencies"], *(req for reqs in extras.values() for req in reqs)]


def _input_requirements(name: str) -> list[str]:
    """The requirement lines of a requirements/ file, comments dropped."""
    lines = (line.split("#", 1)[0].strip() for line in (REQUIREMENTS / name).read_text().splitlines())
    return [line for line in lines if line]


def _lock(name: str) -> dict[NormalizedName, Pin]:
    return parse_lock((REQUIREMENTS / name).read_text())


def test_lock_covers_pyproject_and_every_extra() -> None:
    excluded = {canonicalize_name(Requirement(line).name) for line in _input_requirements("excludes.txt")}
    assert problems(_project_requirements(), _lock("lock.txt"), excluded) == []


def test_build_lock_covers_the_build_back_ends() -> None:
    wanted = [*_pyproject()["build-system"]["requires"], *_input_requirements("build.in")]
    assert problems(wanted, _lock("build.txt"), set()) == []


def test_build_lock_agrees_with_the_lock() -> None:
    # build.txt is installed first into the same environment: a version that
    # differs from lock.txt's would be replaced, or would replace it.
    runtime, build = _lock("lock.txt"), _lock("build.txt")
    differ = {name: (pin.version, runtime[name].version) for name, pin in build.items() if name in runtime}
    assert {name: pair for name, pair in differ.items() if pair[0] != pair[1]} == {}


def test_tools_lock_covers_the_lock_tool() -> None:
    assert problems(_input_requirements("tools.in"), _lock("tools.txt"), set()) == []


_SAMPLE = """\
# This file was autogenerated by uv via the following command:
#    bash scripts/lock.sh
aiohttp==3.14.5 \\
    --hash=sha256:{a}
    # via sluicegate (pyproject.toml)
multidict==7.2.1 \\
    --hash=sha256:{b} \\
    --hash=sha256:{c}
    # via
    #   -c requirements/lock.txt
    #   aiohttp
""".format(a="a" * 64, b="b" * 64, c="c" * 64)


def test_parse_lock_reads_pins_hashes_and_parents() -> None:
    pins = parse_lock(_SAMPLE)
    assert pins == {
        "aiohttp": Pin(Version("3.14.5"), ("a" * 64,), frozenset()),
        "multidict": Pin(Version("7.2.1"), ("b" * 64, "c" * 64), frozenset({"aiohttp"})),
    }


def test_an_agreeing_lock_has_no_problems() -> None:
    assert problems(["aiohttp>=3.10,<4"], parse_lock(_SAMPLE), set()) == []


def test_a_requirement_the_pin_no_longer_satisfies_is_a_problem() -> None:
    assert problems(["aiohttp>=4"], parse_lock(_SAMPLE), set()) == ["aiohttp>=4: locked at 3.14.5"]


def test_an_unlocked_requirement_is_a_problem() -> None:
    found = problems(["aiohttp>=3.10", "redis>=5"], parse_lock(_SAMPLE), set())
    assert found == ["redis>=5: not locked"]


def test_an_entry_without_a_hash_is_a_problem() -> None:
    unhashed = re.sub(r" \\\n    --hash=sha256:[bc]{64}", "", _SAMPLE)
    assert problems(["aiohttp>=3.10"], parse_lock(unhashed), set()) == ["multidict: no sha256"]


def test_entries_nothing_asks_for_are_problems() -> None:
    # aiohttp left pyproject.toml without a re-lock: it and what only it needed.
    found = problems(["redis>=5"], parse_lock(_SAMPLE), set())
    assert found == [
        "redis>=5: not locked",
        "aiohttp: locked, but nothing asks for it",
        "multidict: locked, but nothing asks for it",
    ]


def test_an_excluded_package_in_the_lock_is_a_problem() -> None:
    found = problems(["aiohttp>=3.10"], parse_lock(_SAMPLE), {canonicalize_name("multidict")})
    assert found == ["multidict: locked, though requirements/excludes.txt keeps it out"]
