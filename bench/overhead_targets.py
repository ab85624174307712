"""What the overhead benchmark runs: its targets, their gateway configs, the request it sends."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH_KEY = "sk-bench-0123456789"
MODEL = "fake-model"
TARGETS = ("upstream", "passthrough", "sluicegate", "sluicegate-limits", "sluicegate-budgets", "sluicegate-all")
# Run only when ``--targets`` names them: the full pipeline with its access log off (what the log costs a request).
OPTIONAL = ("sluicegate-all-quiet",)
LABELS = {
    "upstream": "upstream direct",
    "passthrough": "passthrough",
    "sluicegate": "sluicegate",
    "sluicegate-twin": "sluicegate (twin)",
    "sluicegate-limits": "sg+limits",
    "sluicegate-budgets": "sg+budgets+ledger",
    "sluicegate-all": "sg+all",
    "sluicegate-all-quiet": "sg+all, no log",
}
# Which features each Sluicegate target turns on.
FEATURES = {
    "sluicegate": "plain",
    "sluicegate-twin": "plain",
    "sluicegate-limits": "limits",
    "sluicegate-budgets": "budgets",
    "sluicegate-all": "all",
    "sluicegate-all-quiet": "all-quiet",
}
# Measured at the same moment as the foundation, in the paired phase; the twin
# is a second foundation, showing how close to 100% the method itself stays.
PAIRED = ("sluicegate-twin", "sluicegate-limits", "sluicegate-budgets", "sluicegate-all")
CHAT_PATH = "/v1/chat/completions"
_MESSAGES = [{"role": "user", "content": "Say hello to the benchmark."}]


def request_body(stream: bool) -> bytes:
    body: dict[str, object] = {"model": MODEL, "messages": _MESSAGES}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return json.dumps(body, separators=(",", ":")).encode()


def request_headers(target: str) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if target.startswith("sluicegate"):
        headers["Authorization"] = f"Bearer {BENCH_KEY}"
    return headers


def serve_argv(config: Path, port: int) -> list[str]:
    """The command that runs one Sluicegate target: one worker on loopback."""
    return [
        sys.executable, "-m", "router", "serve", "--config", str(config),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip


def bench_key_hash() -> str:
    # the gateway's own hashing, so the stored hash matches the key we send
    from router.auth import hash_api_key

    return hash_api_key(BENCH_KEY)


# The admission and budget path fully on, with limits far above the load so nothing is refused.
_LIMITS = "    limits: {rpm: 100000000, tpm: 1000000000000, max_concurrent: 100000}"
_BUDGETS = "    budgets: [{kind: money, period: monthly, limit: 9000000000000}, {kind: tokens, period: daily, limit: 1000000000000000}]"


def sluicegate_config(upstream_url: str, key_hash: str, features: str = "plain", loop_lag_interval_s: float | None = None) -> str:
    """The gateway's YAML config (``features``: plain, limits, budgets, all, or all-quiet: all with the access log
    off); JSON strings are valid YAML scalars.

    ``loop_lag_interval_s``: how often the gateway samples its event loop's lag, if not the default."""
    if features not in ("plain", "limits", "budgets", "all", "all-quiet"):
        raise ValueError(f"unknown feature set {features!r}")
    server = "server: {log_level: warning" + ("" if loop_lag_interval_s is None else f", loop_lag_interval_s: {loop_lag_interval_s}")
    if features == "all-quiet":
        features, server = "all", server + ", access_log: false"
    q = json.dumps
    tenant = {"plain": [], "limits": [_LIMITS], "budgets": [_BUDGETS], "all": [_LIMITS, _BUDGETS]}[features]
    ledger = "state: {ledger: \"off\"}" if features in ("plain", "limits") else "state: {ledger: sqlite, ledger_path: ledger.sqlite}"
    price = ["    price: {input_per_mtok: 2500000, output_per_mtok: 10000000}"]
    return "\n".join(
        [
            server + "}",
            "deployments:",
            "  - name: fake",
            "    provider: openai",
            f"    base_url: {q(upstream_url)}",
            f"    model: {q(MODEL)}",
            *price,
            "models:",
            f"  - alias: {q(MODEL)}",
            "    deployments: [fake]",
            "tenants:",
            "  - id: bench",
            *tenant,
            "    keys:",
            "      - id: bench-key",
            f"        hash: {q(key_hash)}",
            ledger,
            "",
        ]
    )
