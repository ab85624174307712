"""The built-in guardrails that scan text themselves: tool allow-list, secrets, deny patterns.

Scanning is CPU work: a request with more than ``inline_chars`` of text is
scanned in the thread pool the caller passes in (bounded, owned by the gateway),
so a large prompt never stalls the event loop; deny patterns always run there,
because a pattern's cost depends on the text in ways a length cap cannot bound.
The caller's timeout then bounds the wait (a scan already running in a thread
finishes there, holding one worker, and is ignored).

During a stream, ``WindowGuard`` keeps the last ``window`` characters of the
text and scans them with each new piece: a match split across chunks is found
once its last piece arrives, and each chunk costs ``window + len(piece)``
characters of scanning, never the whole output. A match longer than the window
is not seen.
"""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

from core.config_guardrails import DenyPatterns, Secrets, ToolAllowlist
from policies.guardrails_secrets import Detector, load_detectors
from policies.guardrails_types import Text, Verdict, allowed

# About 0.4 ms of secret scanning: below it the pool's hop costs more than it spares the loop.
INLINE_CHARS = 1024
# Text a secret or pattern scan reads: everything but the tool names the allow-list checks.
_SCANNED = frozenset({"prompt", "tool_result", "retrieved", "tool_call", "definition", "output"})
# A finder: the category of the first finding in a text, or None.
Finder = Callable[[str], str | None]


class WindowGuard:
    """A ``StreamGuard`` over one stream of text: the window's tail plus each new piece."""

    __slots__ = ("_find", "_name", "_tail", "_window")

    def __init__(self, name: str, find: Finder, window: int) -> None:
        self._name = name
        self._find = find
        self._window = window
        self._tail = ""

    def feed(self, delta: str) -> Verdict | None:
        if not delta:
            return None
        text = self._tail + delta
        self._tail = text[-self._window :]
        category = self._find(text)
        return None if category is None else Verdict("blocked", self._name, category)


class _Scanner(ABC):
    """A guardrail whose check is one synchronous finder over every scanned text."""

    always_in_pool = False

    def __init__(self, name: str, executor: Executor, window: int) -> None:
        self._name = name
        self._executor = executor
        self._window = window

    @property
    def name(self) -> str:
        return self._name

    @abstractmethod
    def find(self, text: str) -> str | None:
        """The category of what ``text`` holds, or None."""

    def _find_all(self, texts: Sequence[Text]) -> str | None:
        for t in texts:
            if t.source in _SCANNED:
                category = self.find(t.text)
                if category is not None:
                    return category
        return None

    async def check(self, texts: Sequence[Text]) -> Verdict:
        if self.always_in_pool or sum(len(t.text) for t in texts) > INLINE_CHARS:
            category = await asyncio.get_running_loop().run_in_executor(self._executor, self._find_all, texts)
        else:
            category = self._find_all(texts)
        return allowed(self._name) if category is None else Verdict("blocked", self._name, category)

    def stream(self) -> WindowGuard:
        return WindowGuard(self._name, self.find, self._window)


class SecretsGuard(_Scanner):
    """Credentials, by detect-secrets' detectors.

    The library scans a file line by line; its patterns never cross a line break
    (no ``.`` under DOTALL, and where one anchors on ``^``/``$`` it also accepts
    ``\\s``), so one pass over the whole text finds what a pass per line would,
    at a fraction of the calls.
    """

    def __init__(self, config: Secrets, executor: Executor) -> None:
        super().__init__(config.name, executor, config.window)
        self._detectors: tuple[Detector, ...] = load_detectors(config.detector_names())

    def find(self, text: str) -> str | None:
        for detector in self._detectors:
            if detector.matches(text):
                return detector.category
        return None


class DenyPatternsGuard(_Scanner):
    """Operator-written regular expressions; a finding is named by the pattern's index."""

    always_in_pool = True

    def __init__(self, config: DenyPatterns, executor: Executor) -> None:
        super().__init__(config.name, executor, config.window)
        self._patterns: tuple[tuple[str, re.Pattern[str]], ...] = tuple((f"pattern_{i}", p) for i, p in enumerate(config.compiled()))

    def find(self, text: str) -> str | None:
        for category, pattern in self._patterns:
            if pattern.search(text):
                return category
        return None


class ToolAllowlistGuard:
    """Refuses a request that offers or chooses a tool not on the list (before any engine sees it)."""

    def __init__(self, config: ToolAllowlist) -> None:
        self._name = config.name
        self._allow = frozenset(config.allow)

    @property
    def name(self) -> str:
        return self._name

    async def check(self, texts: Sequence[Text]) -> Verdict:
        for t in texts:
            if t.source == "tool_name" and t.text not in self._allow:
                return Verdict("blocked", self._name, "tool_not_allowed")
        return allowed(self._name)
