"""Settings for the cutover: environment variables read once into a frozen, validated value."""

from config.settings import ConfigError, Settings

__all__ = ["ConfigError", "Settings"]
