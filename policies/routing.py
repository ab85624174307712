"""Model alias --> the deployments that may serve it, in the order to try them."""

from __future__ import annotations

from dataclasses import dataclass

from router.config import DeploymentConfig, ModelConfig
from router.errors import ModelNotFound
from serving.base import Engine


@dataclass(slots=True)
class Deployment:
    config: DeploymentConfig
    engine: Engine

    @property
    def name(self) -> str:
        return self.config.name


@dataclass(slots=True)
class Alias:
    config: ModelConfig
    deployments: list[Deployment]

    @property
    def name(self) -> str:
        return self.config.alias


class Router:
    def __init__(self, aliases: list[Alias]) -> None:
        self._aliases = {a.name: a for a in aliases}

    def aliases(self) -> list[Alias]:
        return list(self._aliases.values())

    def get(self, model: str) -> Alias:
        alias = self._aliases.get(model)
        if alias is None:
            raise ModelNotFound(f"The model `{model[:200]}` does not exist or you do not have access to it.", param="model")
        return alias

    def candidates(self, model: str) -> list[Deployment]:
        return self.get(model).deployments
