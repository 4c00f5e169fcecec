"""Every seam of coati_ray in one place: what varies between the systems users compare us with, each a
registry of names, chosen by a config key, extended by a module of your own without touching the package.

| seam                | config key                   | register (or name `module:attr`)                | file                                 |
|---------------------|------------------------------|-------------------------------------------------|--------------------------------------|
| advantage estimator | algorithm.advantage_estimator      | `register(name, fn)` / `@estimator(...)`        | coati_ray/algo/advantages.py         |
| reward kind         | rewards.sources[].kind       | `register_reward_kind(kind, factory)`           | coati_ray/experience/reward_sources.py     |
| generation backend  | generation.backend           | `register_generator(name, fn)`                  | coati_ray/models/generators.py       |
| environment         | rollout.environment          | `module:Class` (`http` built in)                | coati_ray/experience/environments.py |
| weight transport    | weight_sync.transport               | `@register_transport(name)` / `TRANSPORTS`      | actors/transports/                   |
| placement           | placement                    | `register_placement(Placement(...))`            | actors/experience_source.py          |

Each registry is the one source of truth for its names: the config checks read it, the job resolves from it.
A module of your own that registers by name is listed in the config's `plugins: [my_pkg.plugins]`: it is
imported before the config is checked (so its names are known before Ray starts) and again in every actor
before it builds anything, so every process has the same registries. The registries of the two seams whose
implementations run under Ray (transports, placements) hold import paths here, Ray-free, so that the config
checks know their names; the driver resolves them to their classes before Ray starts.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Optional

from coati_ray.errors import ConfigError

_IMPORTED: set = set()


def import_plugins(modules, key: str = "plugins") -> None:
    """Import each module of `plugins` once per process (they register their plug-ins by name); one line when
    one does not import."""
    for i, name in enumerate(modules or []):
        if name in _IMPORTED:
            continue
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"config error: {key}[{i}]: cannot import '{name}' ({e}); put the module on the Python "
                              "path (a job's working directory is)") from None
        except Exception as e:  # the module itself fails
            raise ConfigError(f"config error: {key}[{i}]: importing '{name}' raised {type(e).__name__}: "
                              f"{(str(e).splitlines() or [''])[0]}; fix the module") from None
        _IMPORTED.add(name)


def import_path(path: str, key: str, example: str) -> Any:
    """The object a `module:attr` path names (a ConfigError in one line when it does not)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"config error: {key}='{path}' is not a registered name or 'module:attr'; e.g. {example}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"config error: {key}: cannot import '{module_name}' ({e}); put the module on the "
                          "Python path (the job's working directory is)") from None
    except Exception as e:
        raise ConfigError(f"config error: {key}: importing '{module_name}' raised {type(e).__name__}: "
                          f"{(str(e).splitlines() or [''])[0]}; fix the module") from None
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigError(f"config error: {key}: '{module_name}' has no '{attr}'; check the name after ':'")
    return obj


class Registry:
    """Names of one seam -> its implementations (an object, or a `module:attr` path imported when resolved)."""

    def __init__(self, key: str, what: str, example: str, extra_names: tuple = ()):
        self.key, self.what, self.example, self.extra_names = key, what, example, extra_names
        self.entries: dict[str, Any] = {}

    def register(self, name: str, implementation: Any) -> Any:
        self.entries[name] = implementation
        return implementation

    def names(self) -> list[str]:
        return list(self.extra_names) + list(self.entries)

    def __contains__(self, name: str) -> bool:
        return name in self.entries or name in self.extra_names

    def check(self, spec: str, key: Optional[str] = None) -> None:
        """A registered name, or `module:attr` that imports (before Ray starts); one line naming the key when
        neither."""
        key = key or self.key
        if spec in self:
            return
        if ":" not in spec:
            close = difflib.get_close_matches(spec, self.names(), n=1)
            raise ConfigError(f"config error: {key}: '{spec}' is not a {self.what}; "
                              + (f"did you mean '{close[0]}'? " if close else "")
                              + f"use one of: {', '.join(self.names())}, or 'module:attr' of your own (a module "
                              "that registers one by name goes in plugins: [...])")
        import_path(spec, key, self.example)

    def resolve(self, spec: str, key: Optional[str] = None) -> Any:
        """The implementation of `spec` (a registered name's, imported if a path; or `module:attr`)."""
        key = key or self.key
        self.check(spec, key)
        found = self.entries.get(spec, spec)
        return import_path(found, key, self.example) if isinstance(found, str) else found


# ---------------------------------------------------------------------------------- weight transports

TRANSPORTS = Registry("weight_sync.transport", "weight transport", "my_pkg.transports:SharedDisk",
                      extra_names=("auto",))
for _name, _path in (("object_store", "actors.transports.object_store:ObjectStore"),
                     ("collective", "actors.transports.collective:Collective"),
                     ("ipc", "actors.transports.ipc:Ipc")):
    TRANSPORTS.register(_name, _path)


# ---------------------------------------------------------------------------------- placements

@dataclass(frozen=True)
class Placement:
    """Where generation runs, as the config checks and the driver need to know it; its ExperienceSource (a
    class under actors/, named by `source`) does the work.

    makers:            it runs maker actors: maker.* reserves them, scale_makers() works, and the weights are
                       published to them after every update (weight_sync.*)
    trainers_generate: the actor group's ranks generate with the weights they train (no copy of the policy)
    supports_async:    algorithm.mode=async can run (generation ahead of the trainers)
    check:             its own checks of a job config, before Ray starts (one ConfigError line)
    """

    name: str
    source: str
    makers: bool
    trainers_generate: bool = False
    supports_async: bool = False
    check: Optional[Callable[[Any], None]] = None


PLACEMENTS = Registry("placement", "placement", "my_pkg.placements:RING (a coati_ray.seams.Placement)")


def register_placement(placement: Placement) -> Placement:
    """Make `placement: <name>` mean `placement` (its source a `module:Class` ExperienceSource)."""
    return PLACEMENTS.register(placement.name, placement)


def placement_of(spec: str, key: str = "placement") -> Placement:
    """The Placement a config names: registered, or `module:attr` holding a Placement."""
    found = PLACEMENTS.resolve(spec, key)
    if not isinstance(found, Placement):
        raise ConfigError(f"config error: {key}: '{spec}' is a {type(found).__name__}, not a "
                          "coati_ray.seams.Placement; build one (name, source='module:YourExperienceSource', "
                          "makers=...) in your module (docs/extending.md)")
    return found
