"""What the console's browser tests share: signed-in pages in fresh browser contexts, and screenshots."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

SignIn = Callable[[str], Awaitable[Any]]


@asynccontextmanager
async def signed_in_pages(browser: Any, base_url: str) -> AsyncIterator[SignIn]:
    """``await sign_in(key)``: a page in a fresh browser context, signed in at ``base_url`` with ``key``; closed at exit."""
    contexts: list[Any] = []

    async def sign_in(key: str) -> Any:
        context = await browser.new_context(viewport={"width": 1360, "height": 960})
        contexts.append(context)
        page = await context.new_page()
        page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        await page.goto(base_url + "/ui/login")
        await page.fill("#key", key)
        await page.click("form button[type=submit]")
        await page.wait_for_load_state()
        return page

    try:
        yield sign_in
    finally:
        for context in contexts:
            await context.close()


async def shot(page: Any, artifacts: Path, name: str) -> None:
    await page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)
