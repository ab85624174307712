"""The plugin host: which hooks a set runs, in what order, and what a plugin's failure does."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from core.config import PluginConfig
from core.plugin import HookRequest, Plugin, Refusal, Reply
from router import plugins as host_module
from router.metrics import Metrics
from router.plugins import NO_PLUGINS, Loaded, PluginFailed, PluginHost, PluginSet, ShortCircuit, check


class Calls:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []


CALLS = Calls()


class TagOptions(msgspec.Struct, forbid_unknown_fields=True):
    tag: str = "x"


class Tagger(Plugin):
    Options = TagOptions

    async def before_route(self, request: HookRequest) -> Reply | None:
        CALLS.seen.append((self.options.tag, "before_route"))
        return None

    def on_chunk(self, request: HookRequest, data: bytes) -> bytes | None:
        return data + self.options.tag.encode()


class Answerer(Plugin):
    async def before_route(self, request: HookRequest) -> Reply | None:
        return Reply({"choices": []})


class Refuser(Plugin):
    async def before_route(self, request: HookRequest) -> Reply | None:
        raise Refusal("no", status=403, code="nope")


class Broken(Plugin):
    async def before_route(self, request: HookRequest) -> Reply | None:
        raise RuntimeError("secret-looking detail")

    def on_ledger_row(self, row: dict[str, Any]) -> None:
        raise RuntimeError("broken")


class Slow(Plugin):
    async def before_route(self, request: HookRequest) -> Reply | None:
        await asyncio.sleep(5)
        return None


class Working(Plugin):
    started = 0
    closed = 0

    async def start(self) -> None:
        Working.started += 1

    async def close(self) -> None:
        Working.closed += 1

    async def worker(self) -> None:
        await asyncio.sleep(3600)


def _loaded(cls: type[Plugin], name: str, on_error: str = "fail_open", timeout_s: float = 1.0, **options: Any) -> Loaded:
    config = PluginConfig(name=name, on_error=on_error, timeout_s=timeout_s, options=options)  # type: ignore[arg-type]
    return Loaded(config, cls, msgspec.convert(options, cls.Options))


def _set(*loaded: Loaded, metrics: Metrics | None = None) -> PluginSet:
    services: Any = SimpleNamespace()
    return PluginSet(tuple((entry, entry.cls(entry.options, services)) for entry in loaded), metrics)


def _ctx() -> Any:
    return SimpleNamespace(request_id="r1", body={}, plugin_state=None)


def test_no_plugins_and_unused_hooks_cost_nothing_to_test() -> None:
    assert not any(
        getattr(NO_PLUGINS, hook) for hook in ("after_auth", "before_route", "before_serve", "on_chunk", "after_settle", "on_ledger_row")
    )
    tagged = _set(_loaded(Tagger, "t"))
    # Only the hooks the class overrides are in the set.
    assert len(tagged.before_route) == 1 and len(tagged.on_chunk) == 1
    assert not tagged.after_auth and not tagged.before_serve and not tagged.after_settle and not tagged.on_ledger_row


async def test_hooks_run_in_config_order_and_chunks_chain() -> None:
    CALLS.seen.clear()
    chain = _set(_loaded(Tagger, "a", tag="a"), _loaded(Tagger, "b", tag="b"))
    await chain.run(chain.before_route, "before_route", _ctx())
    assert CALLS.seen == [("a", "before_route"), ("b", "before_route")]
    assert chain.chunk(_ctx(), b"x") == b"xab"


async def test_a_reply_short_circuits_and_later_plugins_do_not_run() -> None:
    CALLS.seen.clear()
    chain = _set(_loaded(Answerer, "answer"), _loaded(Tagger, "later"))
    with pytest.raises(ShortCircuit) as caught:
        await chain.run(chain.before_route, "before_route", _ctx())
    assert caught.value.plugin == "answer" and caught.value.reply.body == {"choices": []}
    assert CALLS.seen == []


async def test_a_refusal_reaches_the_client_whatever_the_policy() -> None:
    chain = _set(_loaded(Refuser, "refuse", on_error="fail_open"))
    with pytest.raises(Refusal) as caught:
        await chain.run(chain.before_route, "before_route", _ctx())
    assert (caught.value.status, caught.value.code) == (403, "nope")


async def test_fail_open_skips_a_broken_plugin_and_counts_it() -> None:
    CALLS.seen.clear()
    metrics = Metrics()
    chain = _set(_loaded(Broken, "broken"), _loaded(Tagger, "after", tag="after"), metrics=metrics)
    await chain.run(chain.before_route, "before_route", _ctx())
    assert CALLS.seen == [("after", "before_route")]
    assert metrics.registry.get_sample_value(
        "sluicegate_plugin_errors_total", {"plugin": "broken", "hook": "before_route", "reason": "error"}
    ) == 1
    assert metrics.registry.get_sample_value("sluicegate_plugin_hook_seconds_count", {"plugin": "broken", "hook": "before_route"}) == 1


async def test_fail_closed_refuses_the_request_without_the_plugins_message() -> None:
    chain = _set(_loaded(Broken, "broken", on_error="fail_closed"))
    with pytest.raises(PluginFailed) as caught:
        await chain.run(chain.before_route, "before_route", _ctx())
    assert caught.value.status == 503 and caught.value.code == "plugin_failed"
    assert "secret-looking" not in caught.value.message


async def test_a_hook_past_its_timeout_is_a_failure() -> None:
    metrics = Metrics()
    chain = _set(_loaded(Slow, "slow", timeout_s=0.05), metrics=metrics)
    await chain.run(chain.before_route, "before_route", _ctx())
    assert metrics.registry.get_sample_value(
        "sluicegate_plugin_errors_total", {"plugin": "slow", "hook": "before_route", "reason": "timeout"}
    ) == 1
    closed = _set(_loaded(Slow, "slow", on_error="fail_closed", timeout_s=0.05))
    with pytest.raises(PluginFailed):
        await closed.run(closed.before_route, "before_route", _ctx())


def test_a_ledger_row_hook_never_fails_the_row_even_fail_closed() -> None:
    chain = _set(_loaded(Broken, "broken", on_error="fail_closed"))
    chain.ledger_row({"request_id": "r1"})  # logged and counted, not raised


class _EntryPoint:
    def __init__(self, name: str, target: object) -> None:
        self.name = name
        self._target = target

    def load(self) -> object:
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


class Future(Plugin):
    api_version = 7


def test_check_names_every_problem_by_key(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = {
        "tagger": _EntryPoint("tagger", Tagger),
        "future": _EntryPoint("future", Future),
        "crashes": _EntryPoint("crashes", ImportError("no module named nowhere")),
        "not-a-plugin": _EntryPoint("not-a-plugin", object),
    }
    monkeypatch.setattr(host_module, "discover", lambda: installed)
    configs = [
        PluginConfig(name="tagger", options={"tag": "ok"}),
        PluginConfig(name="missing"),
        PluginConfig(name="future"),
        PluginConfig(name="crashes"),
        PluginConfig(name="not-a-plugin"),
        PluginConfig(name="tagger"),
    ]
    loaded, problems = check(configs)
    assert [entry.config.name for entry in loaded] == ["tagger"]
    text = "\n".join(problems)
    assert "`plugins[1].name`: no installed plugin is named 'missing'" in text
    assert "`plugins[2].name`: plugin 'future' was built for plugin interface 7; this gateway speaks 1" in text
    assert "`plugins[3].name`: plugin 'crashes' failed to import" in text
    assert "`plugins[4].name`: entry point 'not-a-plugin' is not a core.plugin.Plugin subclass" in text
    assert "`plugins[5].name`: plugin 'tagger' is listed twice" in text
    _, problems = check([PluginConfig(name="tagger", options={"tag": 3})])
    assert problems and "`plugins[0].options`" in problems[0] and "options.tag" in problems[0]
    _, problems = check([PluginConfig(name="tagger", options={"colour": "red"})])
    assert problems and "colour" in problems[0]
    # A disabled entry is not loaded, so it may name a plugin this replica lacks.
    assert check([PluginConfig(name="missing", enabled=False)]) == ([], [])


async def test_the_host_keeps_unchanged_instances_and_closes_what_a_version_drops() -> None:
    Working.started = Working.closed = 0
    services: Any = SimpleNamespace()
    host = PluginHost(lambda name: services, Metrics())
    first = host.prepare([_loaded(Working, "w")], None)
    await host.start(first)
    same = host.prepare([_loaded(Working, "w")], first)
    await host.start(same)
    assert same.plugins[0][1] is first.plugins[0][1] and Working.started == 1
    changed = host.prepare([_loaded(Working, "w", timeout_s=3.0)], same)
    await host.start(changed)
    assert changed.plugins[0][1] is not same.plugins[0][1] and Working.started == 2
    await host.retire(same, changed)
    assert Working.closed == 1
    await host.retire(changed, host.prepare([], changed))
    assert Working.closed == 2
    await host.close()
    assert Working.closed == 2  # nothing left open to close twice
