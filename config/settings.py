"""Environment variables -> one frozen `Settings`.

This module imports nothing of the project: everything else may import it.
A bad value raises `ConfigError` with one line naming the variable, the value given and the
values allowed.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

Backend = Literal["sqlite", "postgres"]
BACKENDS: tuple[Backend, ...] = ("sqlite", "postgres")


def other_backend(backend: str) -> Backend:
    """The store that is not `backend` (the mirror of a primary, the shadow of a search)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
    return BACKENDS[1] if backend == BACKENDS[0] else BACKENDS[0]


ShadowWorker = Literal["inline", "process"]
SHADOW_WORKERS: tuple[ShadowWorker, ...] = ("inline", "process")

DEFAULT_MIRROR_TIMEOUT_MS = 2000
DEFAULT_SHADOW_SAMPLE_RATE = 1.0
DEFAULT_SHADOW_TIMEOUT_MS = 1000
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


class ConfigError(ValueError):
    """Raised when an environment variable holds a value the project cannot use."""


def _bad(name: str, value: str, allowed: str) -> ConfigError:
    shown = redact_dsn(value) if name == "POSTGRES_DSN" else value
    return ConfigError(f"{name}={shown!r} is not valid: allowed values are {allowed}")


def redact_dsn(dsn: str) -> str:
    """Return the DSN with any password replaced by `***` (safe for logs and errors)."""
    # userinfo up to the last '@' before the path: an unencoded '@' in a password is hidden too,
    # and so is the password of a malformed URL (`postgresql:/u:pw@h`) that gets rejected
    redacted = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*:/*[^:/@?#]*:)[^/?#]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)('[^']*'|[^&\s]*)", r"\1***", redacted, flags=re.IGNORECASE)


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = env.get(name, default).strip()
    if value not in allowed:
        raise _bad(name, value, " or ".join(allowed))
    return value


def _int_in(env: Mapping[str, str], name: str, default: int, lo: int, hi: int,
            unit: str) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise _bad(name, raw, f"an integer from {lo} to {hi} ({unit})") from None
    if not lo <= value <= hi:
        raise _bad(name, raw, f"an integer from {lo} to {hi} ({unit})")
    return value


def _int_ms(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    return _int_in(env, name, default, lo, hi, "milliseconds")


def _rate(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise _bad(name, raw, "a number from 0.0 to 1.0") from None
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise _bad(name, raw, "a number from 0.0 to 1.0")
    return value


def _bytes(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    return _int_in(env, name, default, lo, hi, "bytes")


def _port(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise _bad(name, raw, "a TCP port from 1 to 65535") from None
    if not 1 <= value <= 65535:
        raise _bad(name, raw, "a TCP port from 1 to 65535")
    return value


def _dsn(env: Mapping[str, str]) -> str:
    value = env.get("POSTGRES_DSN", "embedded").strip() or "embedded"
    if value != "embedded" and not value.startswith(("postgresql://", "postgres://")):
        raise _bad("POSTGRES_DSN", value, "'embedded' or a postgresql:// DSN")
    return value


def _token(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    if raw.strip() != raw or len(raw) < 8:
        # never echo a token back: name the rule instead
        raise ConfigError(
            f"{name} is not valid: allowed values are tokens of at least 8 characters "
            "without surrounding whitespace"
        )
    return raw


@dataclass(frozen=True)
class Settings:
    """Everything the project reads from the environment, validated."""

    read_primary: Backend = "sqlite"
    # False when READ_PRIMARY was not in the environment: the default then seeds a new control
    # record but never asks a running fleet to flip (proxy.control)
    read_primary_given: bool = True
    read_primary_file: Path | None = None
    sqlite_path: Path = Path("./data/app.db")
    postgres_dsn: str = field(default="embedded", repr=False)  # repr would show a password
    dual_write: bool = True
    mirror_timeout_ms: int = DEFAULT_MIRROR_TIMEOUT_MS
    shadow_sample_rate: float = DEFAULT_SHADOW_SAMPLE_RATE
    shadow_timeout_ms: int = DEFAULT_SHADOW_TIMEOUT_MS
    # where shadow searches run: on the caller's event loop ("inline"), or in a child process
    # with its own store connections ("process"); opt-in, since the library is embedded in
    # applications that may not expect it to spawn a process
    shadow_worker: ShadowWorker = "inline"
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    admin_token: str | None = field(default=None, repr=False)
    api_token: str | None = field(default=None, repr=False)
    # the service refuses (413) a request body over this many bytes before it is parsed
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the contract's variables (`os.environ` by default)."""
        env = os.environ if env is None else env
        primary_file = env.get("READ_PRIMARY_FILE", "").strip()
        return cls(
            read_primary=_choice(env, "READ_PRIMARY", BACKENDS, "sqlite"),  # type: ignore[arg-type]
            read_primary_given=bool(env.get("READ_PRIMARY", "").strip()),
            read_primary_file=Path(primary_file) if primary_file else None,
            sqlite_path=Path(env.get("SQLITE_PATH", "").strip() or "./data/app.db"),
            postgres_dsn=_dsn(env),
            dual_write=_choice(env, "DUAL_WRITE", ("on", "off"), "on") == "on",
            mirror_timeout_ms=_int_ms(
                env, "MIRROR_TIMEOUT_MS", DEFAULT_MIRROR_TIMEOUT_MS, 1, 600_000
            ),
            shadow_sample_rate=_rate(env, "SHADOW_SAMPLE_RATE", DEFAULT_SHADOW_SAMPLE_RATE),
            shadow_timeout_ms=_int_ms(
                env, "SHADOW_TIMEOUT_MS", DEFAULT_SHADOW_TIMEOUT_MS, 1, 600_000
            ),
            shadow_worker=_choice(  # type: ignore[arg-type]
                env, "SHADOW_WORKER", SHADOW_WORKERS, "inline"
            ),
            metrics_port=_port(env, "METRICS_PORT"),
            metrics_host=env.get("METRICS_HOST", "").strip() or "127.0.0.1",
            admin_token=_token(env, "ADMIN_TOKEN"),
            api_token=_token(env, "API_TOKEN"),
            max_body_bytes=_bytes(env, "MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, 1024, 2**30),
        )

    def with_(self, **changes: object) -> Settings:
        """A copy with some fields changed (tests and the demo use it)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def safe_dsn(self) -> str:
        """The DSN with its password hidden."""
        return redact_dsn(self.postgres_dsn)
