"""The admin console in headless Chromium: an operator's day, a tenant admin's limits, CSRF, bad input, stale edits.

Each page visited is saved as a screenshot (see conftest) for review. The
browser runs on the test session's event loop (Playwright's asyncio API); the
gateway is another process, so the blocking SDK calls here hold nothing up.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.browser.conftest import Console
from tests.browser.pages import SignIn, shot, signed_in_pages

CHAT = [{"role": "user", "content": "hello there"}]


@pytest.fixture
async def open_page(browser: Any, console: Console) -> AsyncIterator[SignIn]:
    """``await open_page(key)``: a page in a fresh browser context, signed in with ``key``."""
    async with signed_in_pages(browser, console.url) as sign_in:
        yield sign_in


async def eventually(page: Any, url: str, check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        await page.goto(url)
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout_s}s")
        await asyncio.sleep(0.5)


def chat_with(base: str, key: str, times: int) -> None:
    with openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=20.0) as sdk:
        for _ in range(times):
            reply = sdk.chat.completions.create(model="chat", messages=CHAT, max_tokens=8)  # type: ignore[arg-type]
            assert reply.choices[0].message.content


async def test_operator_runs_the_gateway_from_the_console(open_page: SignIn, console: Console, artifacts: Path) -> None:
    page = await open_page(console.ops_key)
    assert page.url.endswith("/ui")
    assert await page.locator("h1").inner_text() == "Overview"
    await shot(page, artifacts, "overview")

    # A tenant with a soft money budget of 100 micro-USD a day.
    tenant = f"acme-{secrets.token_hex(3)}"
    await page.goto(console.url + "/ui/tenants")
    await page.fill("#t-id", tenant)
    await page.fill("#t-name", "Acme Corp")
    await page.select_option("#b0-kind", "money")
    await page.select_option("#b0-period", "daily")
    await page.fill("#b0-limit", "100")
    await page.uncheck("input[name='budgets[0].hard']")
    await shot(page, artifacts, "tenants")
    await page.click("#create-tenant button[type=submit]")
    await page.wait_for_url(f"**/ui/tenants/{tenant}")

    # A key, revealed once.
    await page.click("#create-key button[type=submit]")
    key = (await page.locator("#new-key").inner_text()).strip()
    assert key.startswith("sk-")
    await shot(page, artifacts, "key-reveal")
    await page.goto(console.url + f"/ui/tenants/{tenant}")
    assert key not in await page.content() and await page.locator("#new-key").count() == 0

    # 10 tokens a request at 1 micro-USD a token: 9 requests spend 90 % of the budget.
    chat_with(console.url, key, 9)

    async def spent() -> bool:
        return await page.locator("#spend-total").inner_text() != "$0.000000"

    await eventually(page, console.url + f"/ui/tenants/{tenant}/usage", spent, "spend on the usage page")
    assert (await page.locator("#by-model").inner_text()).count("chat") == 1
    await shot(page, artifacts, "usage")

    async def warned() -> bool:
        return "warning" in await page.locator(".budget-state").first.inner_text()

    async def alerted() -> bool:
        return "80 %" in await page.locator("#alerts").inner_text()

    tenant_url = console.url + f"/ui/tenants/{tenant}"
    await eventually(page, tenant_url, warned, "the budget warning")
    await eventually(page, tenant_url, alerted, "the 80 % alert in the history")
    await shot(page, artifacts, "budgets")

    # Rotation: a new key, revealed once; the old one stops working.
    await page.click("#keys tr[data-key] button:has-text('Rotate')")
    rotated = (await page.locator("#new-key").inner_text()).strip()
    assert rotated.startswith("sk-") and rotated != key
    with pytest.raises(openai.AuthenticationError):
        chat_with(console.url, key, 1)

    # A config change (globex's privacy class), then rolled back from the history.
    await page.goto(console.url + "/ui/tenants/globex/policy")
    await page.check("input[name=self_hosted_only]")
    await page.click("#policy button[type=submit]")
    assert await page.locator("input[name=self_hosted_only]").is_checked()
    await page.goto(console.url + "/ui/config")
    changed = int(await page.locator("#history tbody tr").first.get_attribute("data-version"))
    await page.click(f"#history tr[data-version='{changed - 1}'] button")
    await page.wait_for_url("**/ui/config")
    newest = page.locator("#history tbody tr").first
    assert await newest.get_attribute("data-version") == str(changed + 1)
    assert f"rollback to version {changed - 1}" in await newest.inner_text()
    await shot(page, artifacts, "config-history")
    await page.goto(console.url + f"/ui/config/diff?from={changed - 1}&to={changed}")
    assert "self_hosted_only" in await page.locator("table.diff").inner_text()
    await shot(page, artifacts, "config-diff")
    await page.goto(console.url + "/ui/tenants/globex/policy")
    assert not await page.locator("input[name=self_hosted_only]").is_checked()

    # The canary of `assist` is aborted.
    await page.goto(console.url + "/ui/canaries")
    card = page.locator("section.canary[data-model=assist]")
    assert await card.locator(".phase").inner_text() == "canary"
    await card.locator("button[value=abort]").click()
    await page.wait_for_url("**/ui/canaries")
    assert await page.locator("section.canary[data-model=assist] .phase").inner_text() == "rolled_back"
    await shot(page, artifacts, "canaries")

    await page.goto(console.url + "/ui/models")
    assert (await page.locator("#deployments").inner_text()).count("closed") == 3
    await shot(page, artifacts, "models")
    await page.goto(console.url + "/ui/audit?action=key.")
    assert tenant in await page.locator("#audit").inner_text()
    await shot(page, artifacts, "audit")
    await page.goto(console.url + "/ui")
    assert await page.locator(".stat .n").first.inner_text() != "0"
    await shot(page, artifacts, "overview-traffic")


async def test_tenant_admin_sees_only_their_own_tenant(open_page: SignIn, console: Console, artifacts: Path) -> None:
    page = await open_page(console.admin_key)
    assert page.url.endswith("/ui/tenants/globex/usage")
    await shot(page, artifacts, "tenant-usage")
    await page.goto(console.url + "/ui/tenants/globex")
    assert await page.locator("#budgets").is_visible()
    await shot(page, artifacts, "tenant-budgets")
    for path in ("/ui/tenants/initech", "/ui/tenants/initech/usage", "/ui/tenants/initech/usage.csv", "/ui/audit?tenant=initech"):
        response = await page.goto(console.url + path)
        assert response.status == 404, path
        assert "Initech" not in await page.content()
    for path in ("/ui/config", "/ui/canaries", "/ui/models", "/ui/tenants/globex/policy"):
        assert (await page.goto(console.url + path)).status == 403, path
    await page.goto(console.url + "/ui/tenants")
    assert page.url.endswith("/ui/tenants/globex")
    csv = await page.request.get(console.url + "/ui/tenants/globex/usage.csv")
    assert csv.status == 200 and csv.headers["content-type"].startswith("text/csv")
    assert (await csv.text()).splitlines()[0].startswith("day,model,requests")
    # The API refuses the same key by its own rules.
    headers = {"authorization": f"Bearer {console.admin_key}"}
    assert httpx.get(console.url + "/admin/v1/tenants/initech", headers=headers).status_code == 404
    assert httpx.get(console.url + "/v1/ledger/usage?tenant=initech", headers=headers).status_code == 404


async def test_a_write_without_the_csrf_token_is_refused(open_page: SignIn, console: Console) -> None:
    page = await open_page(console.ops_key)
    tenant = f"forged-{secrets.token_hex(3)}"
    missing = await page.request.post(console.url + "/ui/tenants", form={"id": tenant})
    assert missing.status == 403 and "security token" in await missing.text()
    wrong = await page.request.post(console.url + "/ui/tenants", form={"id": tenant, "csrf": "not-the-token"})
    assert wrong.status == 403
    await page.goto(console.url + "/ui/tenants")
    token = await page.locator("#create-tenant input[name=csrf]").get_attribute("value")
    elsewhere = {"origin": "https://evil.example", "sec-fetch-site": "cross-site"}
    cross = await page.request.post(console.url + "/ui/tenants", form={"id": tenant, "csrf": token}, headers=elsewhere)
    assert cross.status == 403
    await page.goto(console.url + "/ui/tenants")
    assert tenant not in await page.locator("#tenants").inner_text()


async def test_bad_input_is_shown_next_to_its_field(open_page: SignIn, console: Console, browser: Any) -> None:
    context = await browser.new_context()
    login = await context.new_page()
    await login.goto(console.url + "/ui/login")
    await login.fill("#key", "sk-not-a-key")
    await login.click("form button[type=submit]")
    assert "Incorrect" in await login.locator(".field-error[data-field=key]").inner_text()
    await context.close()

    page = await open_page(console.ops_key)
    await page.goto(console.url + "/ui/tenants")
    await page.fill("#t-id", "bad id with spaces")
    async with page.expect_response(lambda r: r.request.method == "POST") as posted:
        await page.click("#create-tenant button[type=submit]")
    assert (await posted.value).status == 400
    assert await page.locator(".field-error[data-field=id]").is_visible()
    assert await page.locator("#t-id").input_value() == "bad id with spaces"

    await page.goto(console.url + "/ui/tenants")
    await page.fill("#t-id", f"ok-{secrets.token_hex(3)}")
    await page.fill("#t-weight", "zero")
    await page.click("#create-tenant button[type=submit]")
    assert re.search(r"int", await page.locator(".field-error[data-field=weight]").inner_text())


async def test_a_stale_edit_shows_the_conflict(open_page: SignIn, console: Console, artifacts: Path) -> None:
    first = await open_page(console.ops_key)
    second = await first.context.new_page()
    for page in (first, second):
        await page.goto(console.url + "/ui/tenants/initech/policy")
    await first.select_option("#p-pii", "block")
    await first.click("#policy button[type=submit]")
    await second.check("input[name=self_hosted_only]")
    await second.click("#policy button[type=submit]")
    assert await second.locator("h1").inner_text() == "Someone else changed the config"
    assert "tenants" in await second.locator("table.diff").inner_text()
    await shot(second, artifacts, "conflict")
    await second.goto(console.url + "/ui/tenants/initech/policy")
    assert not await second.locator("input[name=self_hosted_only]").is_checked()


async def test_pages_carry_a_strict_policy_and_a_locked_down_cookie(open_page: SignIn, console: Console) -> None:
    page = await open_page(console.ops_key)
    response = await page.goto(console.url + "/ui/tenants")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy
    (cookie,) = await page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and console.ops_key not in cookie["value"]
    await page.click("header form.signout button")
    await page.wait_for_url("**/ui/login")
    assert (await page.goto(console.url + "/ui/tenants")).url.endswith("/ui/login")


async def test_an_operator_edits_a_tenants_guardrails_and_mcp_tools(open_page: SignIn, console: Console, artifacts: Path) -> None:
    page = await open_page(console.ops_key)
    await page.goto(console.url + "/ui/tenants/initech")
    await page.fill("#g-list", "- kind: deny_patterns\n  name: no-ssn\n  patterns: ['\\d{3}-\\d{2}-\\d{4}']\n")
    await page.fill("#g-mcp", "docs/*\nfiles/read_file")
    await page.click("#edit-guardrails button[type=submit]")
    await page.wait_for_url("**/ui/tenants/initech#guardrails")
    assert "no-ssn" in await page.locator("#g-list").input_value()
    assert await page.locator("#g-mcp").input_value() == "docs/*\nfiles/read_file"
    await shot(page, artifacts, "tenant-guardrails")
    # A grant that is not one comes back next to its field, as typed; nothing is written.
    await page.fill("#g-mcp", "not a grant")
    async with page.expect_response(lambda r: r.request.method == "POST") as posted:
        await page.click("#edit-guardrails button[type=submit]")
    assert (await posted.value).status == 400
    assert "server/tool" in await page.locator(".field-error[data-field=mcp_tools]").inner_text()
    assert await page.locator("#g-mcp").input_value() == "not a grant"
    await page.goto(console.url + "/ui/tenants/initech")
    assert await page.locator("#g-mcp").input_value() == "docs/*\nfiles/read_file"
