"""Embedded defaults: what `sluicegate serve` runs with no config file.

A laptop setup: loopback only, one local tenant with a documented development
key, and the local CPU model when the llama.cpp engine and its model package are
installed.
"""

from __future__ import annotations

import importlib.util

from core.config import Config, DeploymentConfig, KeyConfig, ModelConfig, TenantConfig
from router.auth import hash_api_key

# Accepted only by the embedded defaults, which listen on loopback.
DEV_API_KEY = "sk-sluicegate-local"
LOCAL_ALIAS = "smollm2"


def _local_model_path() -> str | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    from serving.llamacpp import default_model_path

    return default_model_path()


def embedded_config() -> Config:
    deployments: list[DeploymentConfig] = []
    models: list[ModelConfig] = []
    path = _local_model_path()
    if path is not None:
        deployments.append(
            DeploymentConfig(
                name="local-smollm2",
                provider="llamacpp",
                model="SmolLM2-135M-Instruct",
                privacy="self_hosted",
                options={"model_path": path},
            )
        )
        models.append(ModelConfig(alias=LOCAL_ALIAS, deployments=["local-smollm2"], owned_by="local"))
    tenant = TenantConfig(id="local", name="Local development", keys=[KeyConfig(id="local-dev", hash=hash_api_key(DEV_API_KEY))])
    return Config(deployments=deployments, models=models, tenants=[tenant])
