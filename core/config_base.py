"""The config's ground: the error every key problem raises, the strict Struct, secret references, number types.

Shared by the live document (``core.config``) and the start-time state sections (``core.config_state``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import msgspec

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]


class ConfigError(Exception):
    """A configuration problem; the message names the file and the key."""


class Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class SecretRef(Strict):
    """Where a secret lives. Exactly one of ``env`` or ``file``."""

    env: str | None = None
    file: str | None = None

    def __post_init__(self) -> None:
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret reference needs exactly one of `env` or `file`")

    def describe(self) -> str:
        return f"env:{self.env}" if self.env is not None else f"file:{self.file}"

    def resolve(self) -> str:
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ConfigError(f"environment variable {self.env} is not set")
            return value
        assert self.file is not None
        try:
            return Path(self.file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read secret file {self.file}: {exc.strerror}") from None
