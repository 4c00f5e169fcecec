"""Config fields with a one-line help each (CleanRL style): the README's config reference and --help-config
are generated from them."""

from __future__ import annotations

from dataclasses import field


def opt(default, help: str):
    """A config field with a default and a one-line description."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def required(help: str):
    """A config field the user must set."""
    return field(metadata={"help": help, "required": True})
