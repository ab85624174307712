"""Typed configuration: msgspec Structs loaded from YAML or TOML.

Unknown keys are errors that name the key and the file. Secrets are only ever
references (``{env: NAME}`` or ``{file: PATH}``) and are resolved at start-up;
their values are never printed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

# The ground types and the start-time state sections live in their own modules; importers name them from here.
from core.config_base import ConfigError as ConfigError  # noqa: PLC0414 - re-exported
from core.config_base import NonNegInt as NonNegInt  # noqa: PLC0414 - re-exported
from core.config_base import PositiveFloat as PositiveFloat  # noqa: PLC0414 - re-exported
from core.config_base import PositiveInt as PositiveInt  # noqa: PLC0414 - re-exported
from core.config_base import SecretRef as SecretRef  # noqa: PLC0414 - re-exported
from core.config_base import Strict as _Strict
from core.config_cache import CacheConfig, TenantCacheConfig
from core.config_guardrails import GuardrailConfig
from core.config_oidc import ConsoleOidcConfig
from core.config_state import BatchesConfig as BatchesConfig  # noqa: PLC0414 - re-exported
from core.config_state import S3Config as S3Config  # noqa: PLC0414 - re-exported
from core.config_state import StateConfig as StateConfig  # noqa: PLC0414 - re-exported

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$")]
# An MCP grant: "server/tool" (one tool of an upstream MCP server) or "server/*" (all of that server's tools,
# resources and prompts); the mcp plugin reads them (plugins/mcp/README.md).
McpGrant = Annotated[str, msgspec.Meta(max_length=257, pattern=r"^[A-Za-z0-9_-]{1,64}/(\*|[A-Za-z0-9_.-]{1,128})$")]
Provider = Literal["openai", "openai_compatible", "azure", "anthropic", "gemini", "vllm", "triton", "llamacpp", "plugin"]

DEFAULT_PORT = 8300
# The largest money budget whose pico-USD counter fits a signed 64-bit integer (~9.2M USD).
MAX_MONEY_MICRO_USD = (2**63 - 1) // 10**6


class BudgetsConfig(_Strict):
    # Completion allowance reserved when a request sets no max_tokens.
    default_completion_cap: Annotated[int, msgspec.Meta(ge=1)] = 4096
    # A replica that dies holding reservations gives them back after this long.
    lease_s: PositiveFloat = 900.0
    # When the shared counter store is unreachable: serve anyway (open) or 503 (closed).
    limits_on_store_error: Literal["fail_open", "fail_closed"] = "fail_open"
    budgets_on_store_error: Literal["fail_open", "fail_closed"] = "fail_closed"


class TelemetryConfig(_Strict):
    tracing: bool = False
    # otlp needs opentelemetry-exporter-otlp-proto-http (extra `otel`); console prints spans.
    exporter: Literal["otlp", "console", "memory"] = "otlp"
    otlp_endpoint: str | None = None
    sample_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0
    service_name: str = "sluicegate"


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = DEFAULT_PORT
    workers: Annotated[int, msgspec.Meta(ge=1, le=256)] = 1
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 8 * 1024 * 1024
    grace_period_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # One JSON line per request on the `sluicegate.access` logger.
    access_log: bool = True
    # How often the event loop's lag is sampled into sluicegate_event_loop_lag_seconds
    # (router.loop_lag); 0 turns the probe off.
    loop_lag_interval_s: Annotated[float, msgspec.Meta(ge=0)] = 0.1
    # The garbage collector's thresholds once started (Python's default is
    # 700, 10, 10). Each request allocates a few hundred short-lived objects, so
    # at the default the youngest generation is collected every few requests:
    # measured here, collections took about 17 us of CPU per request.
    gc_thresholds: Annotated[list[Annotated[int, msgspec.Meta(ge=1)]], msgspec.Meta(min_length=3, max_length=3)] = msgspec.field(
        default_factory=lambda: [10_000, 20, 20]
    )


class JwtConfig(_Strict):
    issuer: Annotated[str, msgspec.Meta(min_length=1)]
    audience: Annotated[str, msgspec.Meta(min_length=1)]
    # Exactly one of the two: where the identity provider's public keys are.
    jwks_url: str | None = None
    jwks_file: str | None = None
    # Claim naming the tenant; "org.id" walks into nested objects.
    tenant_claim: Annotated[str, msgspec.Meta(min_length=1)] = "tenant"
    algorithms: Annotated[list[Literal["RS256", "ES256"]], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["RS256", "ES256"]
    )
    leeway_s: Annotated[float, msgspec.Meta(ge=0, le=600)] = 30.0
    refresh_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    # Reloads of the key set (periodic or for an unknown kid) are at least this far apart.
    min_refresh_s: Annotated[float, msgspec.Meta(ge=0)] = 10.0

    def __post_init__(self) -> None:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError("jwt needs exactly one of `jwks_url` or `jwks_file`")
        if self.jwks_url is not None and not self.jwks_url.startswith(("https://", "http://")):
            raise ValueError("`jwks_url` must be an https:// or http:// URL")
        if self.min_refresh_s > self.refresh_s:
            raise ValueError("`min_refresh_s` must not exceed `refresh_s`")


class AuthConfig(_Strict):
    # Keyed hashing of API keys; without a pepper keys are hashed with an empty key.
    key_pepper: SecretRef | None = None
    # OIDC/JWT bearer tokens as a second way in (RS256/ES256 against a JWKS).
    jwt: JwtConfig | None = None
    # Sign-in to the console (/ui) with an OIDC provider: authorization code with PKCE.
    oidc: ConsoleOidcConfig | None = None
    # Signs the console's session cookies (at least 32 characters); every replica needs the same one.
    # None: each `sluicegate serve` makes its own at start and shares it with its workers.
    console_secret: SecretRef | None = None


class Price(_Strict):
    """Prices in micro-USD per one million tokens (so cost per token is exact in pico-USD)."""

    input_per_mtok: NonNegInt = 0
    output_per_mtok: NonNegInt = 0
    cached_input_per_mtok: NonNegInt | None = None
    # What requests of a batch (``/v1/batches``) pay; None: half the interactive
    # price (rounded down), as the providers' 50% batch discount.
    batch_input_per_mtok: NonNegInt | None = None
    batch_output_per_mtok: NonNegInt | None = None

    def for_batch(self) -> Price:
        """The price a batch request is reserved and billed at (cached input: half its interactive price too)."""
        return Price(
            input_per_mtok=self.input_per_mtok // 2 if self.batch_input_per_mtok is None else self.batch_input_per_mtok,
            output_per_mtok=self.output_per_mtok // 2 if self.batch_output_per_mtok is None else self.batch_output_per_mtok,
            cached_input_per_mtok=None if self.cached_input_per_mtok is None else self.cached_input_per_mtok // 2,
        )


class TimeoutsConfig(_Strict):
    connect_s: PositiveFloat = 5.0
    read_s: PositiveFloat = 120.0
    total_s: PositiveFloat = 600.0


class DeploymentConfig(_Strict):
    name: Name
    provider: Provider
    model: Annotated[str, msgspec.Meta(min_length=1)]
    base_url: str = ""
    api_key: SecretRef | None = None
    privacy: Literal["self_hosted", "cloud"] = "cloud"
    region: str = ""
    price: Price = msgspec.field(default_factory=Price)
    timeouts: TimeoutsConfig = msgspec.field(default_factory=TimeoutsConfig)
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 256
    # Provider-specific settings, validated by the provider's own Struct.
    options: dict[str, Any] | None = None



Percent = Annotated[float, msgspec.Meta(gt=0, le=100)]
Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]


class CanaryGates(_Strict):
    """SLO gates a candidate must hold; None turns a gate off.

    Absolute gates look at the candidate alone; relative ones compare it with the
    stable deployment on the same windows (error rate: difference; latency and
    cost: ratio). Errors are upstream failures (5xx, timeouts, broken streams),
    never a client's 4xx.
    """

    max_error_rate: Fraction | None = 0.05
    max_error_rate_increase: Fraction | None = 0.02
    max_p95_latency_ms: PositiveFloat | None = None
    max_p95_latency_ratio: PositiveFloat | None = 1.5
    max_p95_ttft_ms: PositiveFloat | None = None
    max_p95_ttft_ratio: PositiveFloat | None = 1.5
    max_cost_ratio: PositiveFloat | None = None


class ShadowConfig(_Strict):
    """Mirror a share of stable's requests to the candidate before any user sees it."""

    share: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.1
    # Mirrored calls in flight on one replica; beyond it they are dropped (shed first).
    max_in_flight: Annotated[int, msgspec.Meta(ge=1)] = 8
    # The ledger account mirrored calls are billed to: never the tenant's.
    bill_to: Name = "sluicegate-shadow"


CanaryPhase = Literal["shadow", "canary", "paused", "promoted", "rolled_back"]


class CanaryState(_Strict):
    """Where a canary stands; written only by decisions, each one a new config version."""

    phase: CanaryPhase = "canary"
    # Index into `steps` while in the canary phase.
    step: NonNegInt = 0
    # When the current phase or step began (epoch seconds); 0: when first loaded.
    since: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # Before a pause: the phase to resume.
    paused_from: Literal["shadow", "canary"] | None = None
    decision: str = ""
    reason: str = ""


class CanaryConfig(_Strict):
    # The candidate: one deployment or a pool of replicas.
    candidate: Annotated[list[Name], msgspec.Meta(min_length=1)]
    # Traffic steps in percent of the alias's requests; the last one should be 100.
    steps: Annotated[list[Percent], msgspec.Meta(min_length=1)] = msgspec.field(default_factory=lambda: [1.0, 5.0, 25.0, 50.0, 100.0])
    interval_s: PositiveFloat = 60.0
    # Candidate samples needed in a step before it may move on; fewer: hold.
    min_samples: Annotated[int, msgspec.Meta(ge=1)] = 50
    gates: CanaryGates = msgspec.field(default_factory=CanaryGates)
    # A phase before the first step in which traffic is mirrored, never served.
    shadow: ShadowConfig | None = None
    # Assignment key: the x-session-id header, the request's `user`, or none (weighted only).
    sticky: Literal["session", "user", "none"] = "session"
    state: CanaryState = msgspec.field(default_factory=CanaryState)

    def weight(self) -> float:
        """Percent of live traffic the candidate serves now."""
        if self.state.phase != "canary":
            return 0.0
        return self.steps[min(self.state.step, len(self.steps) - 1)]


class ModelConfig(_Strict):
    alias: Name
    # Tiers in fallback order; a tier that is a list is a pool of replicas
    # balanced among themselves.
    deployments: Annotated[list[str | Annotated[list[str], msgspec.Meta(min_length=1)]], msgspec.Meta(min_length=1)]
    owned_by: str = "sluicegate"
    balance: Literal["least_outstanding", "affinity"] = "least_outstanding"
    # With `affinity`: how much of the prompt's start identifies a shared prefix.
    affinity_prefix_chars: Annotated[int, msgspec.Meta(ge=1)] = 512
    # Requests in flight for this alias on one replica; beyond it they queue
    # (priority classes, weighted fair sharing between tenants). None: no queue.
    max_concurrent: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_queue: Annotated[int, msgspec.Meta(ge=0)] = 1000
    queue_timeout_s: PositiveFloat = 30.0
    # Free slots kept for each other active tenant beyond what it holds, so that a
    # light tenant never waits behind a heavy one's requests (0: none kept back).
    queue_headroom: Annotated[int, msgspec.Meta(ge=0)] = 1
    canary: CanaryConfig | None = None
    # The exact response cache (``core.config_cache``); None: this alias's answers are never cached.
    cache: CacheConfig | None = None
    # What a cache hit is billed (per million tokens of the stored usage); None: nothing.
    cache_price: Price | None = None
    # Guardrails (``core.config_guardrails``) every request of this alias runs, after its tenant's.
    guardrails: list[GuardrailConfig] = msgspec.field(default_factory=list)

    def tiers(self) -> list[list[str]]:
        return [[t] if isinstance(t, str) else list(t) for t in self.deployments]


class ResilienceConfig(_Strict):
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=10)] = 3
    backoff_base_s: Annotated[float, msgspec.Meta(ge=0)] = 0.1
    backoff_max_s: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    max_retry_after_s: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    breaker_consecutive_failures: Annotated[int, msgspec.Meta(ge=1)] = 5
    breaker_error_rate: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    breaker_window_s: PositiveFloat = 30.0
    breaker_min_requests: Annotated[int, msgspec.Meta(ge=1)] = 20
    breaker_open_s: PositiveFloat = 15.0
    # Active health checks: 0 turns them off (the passive breaker still runs).
    health_check_interval_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0


Priority = Literal["critical", "high", "standard", "low"]


class LimitsConfig(_Strict):
    """Admission limits; None means unlimited."""

    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None
    max_concurrent: PositiveInt | None = None


class BudgetConfig(_Strict):
    """A budget over a period. Money is in micro-USD; tokens are prompt + completion."""

    kind: Literal["tokens", "money"]
    period: Literal["daily", "monthly", "lifetime"]
    limit: Annotated[int, msgspec.Meta(ge=0)]
    # Hard budgets refuse requests; soft budgets alert (metric, log) and allow.
    hard: bool = True
    # Percentages of the limit at which a budget alert goes out, once each per period (empty: none).
    alert_at: Annotated[list[Annotated[int, msgspec.Meta(ge=1, le=100)]], msgspec.Meta(max_length=10)] = msgspec.field(
        default_factory=lambda: [80, 90, 100]
    )

    def __post_init__(self) -> None:
        # Counters are signed 64-bit integers of tokens or pico-USD (1e6 per micro-USD).
        ceiling = MAX_MONEY_MICRO_USD if self.kind == "money" else 2**63 - 1
        if self.limit > ceiling:
            raise ValueError(f"a {self.kind} budget limit must be at most {ceiling}")


class KeyConfig(_Strict):
    id: Name
    hash: Annotated[str, msgspec.Meta(pattern=r"^hmac-sha256:[0-9a-f]{64}$")]
    scopes: list[str] = msgspec.field(default_factory=list)
    expires_at: datetime | None = None
    disabled: bool = False
    priority: Priority | None = None
    limits: LimitsConfig | None = None
    budgets: list[BudgetConfig] = msgspec.field(default_factory=list)
    # Narrows the tenant's MCP grants for this key (a tool must match both); None: the tenant's grants.
    mcp_tools: list[McpGrant] | None = None


class DowngradeConfig(_Strict):
    """Map aliases to cheaper ones once a tenant's money budget runs low."""

    when_remaining_below: Annotated[float, msgspec.Meta(gt=0, lt=1)]
    aliases: dict[str, str]


class RoutingPolicy(_Strict):
    # pinned: the alias's order; cheapest: lowest price first; lowest_latency: lowest observed p95 first.
    strategy: Literal["pinned", "cheapest", "lowest_latency"] = "pinned"
    allowed_deployments: list[str] | None = None
    # Aliases the tenant may call and see in /v1/models (None: all); any other is a 404, as an unknown one.
    allowed_models: list[str] | None = None
    regions: list[str] | None = None
    # Only self-hosted deployments may see this tenant's requests.
    self_hosted_only: bool = False
    downgrade: DowngradeConfig | None = None


class PoliciesConfig(_Strict):
    """Defaults for tenants that set none of their own."""

    routing: RoutingPolicy = msgspec.field(default_factory=RoutingPolicy)
    # PII policy, validated by policies.pii.PiiPolicy (action, entities, thresholds, ...).
    pii: dict[str, Any] | None = None


class TenantConfig(_Strict):
    id: Name
    name: str = ""
    keys: list[KeyConfig] = msgspec.field(default_factory=list)
    disabled: bool = False
    priority: Priority = "standard"
    # Weighted fair sharing of queues between tenants.
    weight: PositiveInt = 1
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    budgets: list[BudgetConfig] = msgspec.field(default_factory=list)
    routing: RoutingPolicy | None = None
    pii: dict[str, Any] | None = None
    # Prompts and completions on the tenant's trace spans (after its PII policy ran); off by default.
    trace_content: bool = False
    # Its part in the response cache: opt out, or share entries through a named scope. None: its own entries.
    cache: TenantCacheConfig | None = None
    # Guardrails (``core.config_guardrails``) every request of this tenant runs, before its alias's.
    guardrails: list[GuardrailConfig] = msgspec.field(default_factory=list)
    # The MCP tools (resources, prompts) the tenant may see and call through the mcp plugin; empty: none.
    mcp_tools: list[McpGrant] = msgspec.field(default_factory=list)


class AlertsConfig(_Strict):
    """Where operational alerts go (a canary rolled back): a POST with an HMAC-SHA256-signed body."""

    webhook_url: str | None = None
    webhook_secret: SecretRef | None = None
    timeout_s: PositiveFloat = 5.0
    # A failed delivery is tried again this many times, waiting backoff_s, then twice as long each time.
    retries: Annotated[int, msgspec.Meta(ge=0, le=20)] = 4
    backoff_s: Annotated[float, msgspec.Meta(ge=0, le=300)] = 1.0


class PluginConfig(_Strict):
    """One enabled plugin: its entry-point name, its options, and what its failure does to a request."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    enabled: bool = True
    # Decoded by the plugin's own ``Options`` Struct (errors name the key under `options`).
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    # A hook that raises or runs past `timeout_s`: log, count and go on (fail_open), or end the request with 503 (fail_closed).
    on_error: Literal["fail_open", "fail_closed"] = "fail_open"
    timeout_s: PositiveFloat = 2.0


class LiveConfig(_Strict):
    """What reloads without a restart: the versioned document every replica serves."""

    resilience: ResilienceConfig = msgspec.field(default_factory=ResilienceConfig)
    policies: PoliciesConfig = msgspec.field(default_factory=PoliciesConfig)
    deployments: list[DeploymentConfig] = msgspec.field(default_factory=list)
    models: list[ModelConfig] = msgspec.field(default_factory=list)
    tenants: list[TenantConfig] = msgspec.field(default_factory=list)
    alerts: AlertsConfig = msgspec.field(default_factory=AlertsConfig)
    # Plugins, in the order their hooks run.
    plugins: list[PluginConfig] = msgspec.field(default_factory=list)


# The sections of the file read once, at start: changing them needs a restart.
START_TIME_KEYS = ("server", "auth", "budgets", "telemetry", "state", "batches")
LIVE_KEYS = tuple(LiveConfig.__struct_fields__)


class Config(_Strict):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    resilience: ResilienceConfig = msgspec.field(default_factory=ResilienceConfig)
    budgets: BudgetsConfig = msgspec.field(default_factory=BudgetsConfig)
    policies: PoliciesConfig = msgspec.field(default_factory=PoliciesConfig)
    telemetry: TelemetryConfig = msgspec.field(default_factory=TelemetryConfig)
    deployments: list[DeploymentConfig] = msgspec.field(default_factory=list)
    models: list[ModelConfig] = msgspec.field(default_factory=list)
    tenants: list[TenantConfig] = msgspec.field(default_factory=list)
    alerts: AlertsConfig = msgspec.field(default_factory=AlertsConfig)
    # Plugins, in the order their hooks run.
    plugins: list[PluginConfig] = msgspec.field(default_factory=list)
    state: StateConfig = msgspec.field(default_factory=StateConfig)
    batches: BatchesConfig = msgspec.field(default_factory=BatchesConfig)

    def live(self) -> LiveConfig:
        return LiveConfig(**{key: getattr(self, key) for key in LIVE_KEYS})

    def with_live(self, live: LiveConfig) -> Config:
        """This file's start-time settings with another live document."""
        return msgspec.structs.replace(self, **{key: getattr(live, key) for key in LIVE_KEYS})
