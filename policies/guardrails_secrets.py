"""detect-secrets' detectors, used as plain line scanners.

Only each plugin's ``analyze_string`` runs: no baseline, no settings file, no
filters, and never ``verify`` (which would call the provider with the secret).
The high-entropy plugins apply their entropy limit here, as the library does in
``analyze_line``. A detector's category is its ``secret_type`` in snake case
(``AWS Access Key`` --> ``aws_access_key``).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any


class Detector:
    """One detect-secrets plugin: whether a line holds what it looks for."""

    __slots__ = ("_entropy", "_plugin", "category")

    def __init__(self, plugin: Any) -> None:
        self._plugin = plugin
        self.category = re.sub(r"[^a-z0-9]+", "_", str(plugin.secret_type).lower()).strip("_")
        limit = getattr(plugin, "entropy_limit", None)
        self._entropy: float | None = float(limit) if limit is not None else None

    def matches(self, line: str) -> bool:
        for found in self._plugin.analyze_string(line):
            if self._entropy is None or self._plugin.calculate_shannon_entropy(found) > self._entropy:
                return True
        return False


@cache
def detector_classes() -> Mapping[str, type]:
    """Every detector class detect-secrets ships, by class name."""
    from detect_secrets import plugins
    from detect_secrets.plugins.base import BasePlugin

    found: dict[str, type] = {}
    for module in pkgutil.iter_modules(plugins.__path__):
        loaded = importlib.import_module(f"{plugins.__name__}.{module.name}")
        for name, cls in vars(loaded).items():
            if inspect.isclass(cls) and issubclass(cls, BasePlugin) and not inspect.isabstract(cls) and cls.__module__ == loaded.__name__:
                found[name] = cls
    return found


def load_detectors(names: Iterable[str]) -> tuple[Detector, ...]:
    classes = detector_classes()
    return tuple(Detector(classes[name]()) for name in names)
