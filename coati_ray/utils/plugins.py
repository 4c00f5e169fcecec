"""Loading the user's own code named in a config as `module:function` (reward functions, estimators, ...)."""

from __future__ import annotations

import importlib
from typing import Callable

from coati_ray.errors import ConfigError


def load_callable(spec: str, key: str, example: str) -> Callable:
    """Import `module:function` for config key `key`; a ConfigError (one line) when the path is wrong."""
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise ConfigError(f"config error: {key}='{spec}' is not 'module:function'; e.g. {example}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"config error: {key}: cannot import '{module_name}' ({e}); put the module on the "
                          "Python path (the job's working directory is)") from None
    except Exception as e:  # the module itself fails (a syntax error, an exception at import time)
        raise ConfigError(f"config error: {key}: importing '{module_name}' raised {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}; fix the module") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"config error: {key}: '{module_name}' has no function '{name}'; check the name after ':'")
    return fn
