"""User-facing errors: each one renders as a single line that says what, where and how to fix."""


class CoatiError(Exception):
    """Base class for errors caused by the user's input (config, data, model directories)."""


class ConfigError(CoatiError):
    """A config key is unknown, mistyped or inconsistent with another one."""


class DataError(CoatiError):
    """A dataset file is missing, empty, or has a row without its fields."""


class ModelError(CoatiError):
    """A model directory is missing or unusable, or a state dict does not match a model."""
