"""YAML -> typed dataclasses, `a.b=value` overrides, and the resolved `config.yaml` written back.

Unknown keys get a "did you mean" suggestion; wrong types name the key, the value and the type
that was expected. Nothing here imports torch or loads a model.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from typing import Any, Literal, Optional, Union, get_args, get_origin

import yaml

from coati_ray.errors import ConfigError

T = typing.TypeVar("T")


def load_config(cls: type[T], path: Optional[str], overrides: Optional[list[str]] = None,
                output_dir: Optional[str] = None, prepare: Optional[typing.Callable[[dict], None]] = None) -> T:
    """Read `path` (YAML), apply `a.b=value` overrides and build `cls`; validation is separate.

    `prepare` may check or fill the raw mapping before it is typed (e.g. the pipeline's chained paths).
    """
    data: dict = {}
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"config error: --config '{path}' does not exist; pass a YAML file from configs/")
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            problem = getattr(e, "problem", e)
            raise ConfigError(f"config error: {path}{where} is not valid YAML ({problem}); fix the syntax") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config error: {path} must hold a mapping of sections, got {type(data).__name__}")
    data = rename_tree(cls, data)  # a file of old names: under today's names before the overrides land
    for item in overrides or []:
        apply_override(data, item, cls)
    if output_dir is not None:
        data["output_dir"] = output_dir
    if prepare is not None:
        prepare(data)
    derive_batch_sizes(data)
    return from_dict(cls, data)


def derive_batch_sizes(data: dict) -> None:
    """A trainer section with accumulation_steps and no batch_size (Coati's --batch_size per rank and
    --accumulation_steps): its global batch is micro_batch_size x accumulation_steps x resources.num_ranks.
    Applies to a stage's own config and to a pipeline's stage sections."""
    from coati_ray.config.schema import ResourceConfig, TrainerConfig

    for section in [data] + [v for v in data.values() if isinstance(v, dict)]:
        trainer, resources = section.get("trainer"), section.get("resources")
        if not isinstance(trainer, dict) or trainer.get("accumulation_steps") is None or "batch_size" in trainer:
            continue
        micro = trainer.get("micro_batch_size", TrainerConfig.micro_batch_size)
        ranks = (resources or {}).get("num_ranks", ResourceConfig.num_ranks) if isinstance(resources, dict) \
            else ResourceConfig.num_ranks
        if all(isinstance(v, int) and not isinstance(v, bool) for v in (micro, ranks, trainer["accumulation_steps"])):
            trainer["batch_size"] = micro * trainer["accumulation_steps"] * ranks


def parse_override(item: str) -> tuple[list[str], Any]:
    """`trainer.batch_size=8` -> (['trainer', 'batch_size'], 8); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"config error: override '{item}' has no '='; write it as section.key=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"config error: override '{item}' has an empty key part; write it as section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def renamed_path(cls: Optional[type], parts: list[str]) -> list[str]:
    """An override's key path under today's names: a section or key renamed since (a config class's
    `RENAMES`, old name -> new) is read under its new name, said once."""
    if cls is None:
        return parts
    out, current = [], cls
    for part in parts:
        current = _strip_optional(current)
        new = getattr(current, "RENAMES", {}).get(part) if dataclasses.is_dataclass(current) else None
        if new is not None:
            _note_renamed(".".join(out + [part]), ".".join(out + [new]))
            part = new
        out.append(part)
        if not dataclasses.is_dataclass(current):
            current = None
            continue
        current = typing.get_type_hints(current).get(part)
    return out


def _note_renamed(old: str, new: str) -> None:
    from coati_ray.config.notes import note

    note(f"config key '{old}' is now '{new}' (read under its new name; docs/concepts.md has the renames)")


def _rename_keys(cls: type, data: dict, prefix: str) -> dict:
    """`data` with the keys `cls` renamed (cls.RENAMES) under their new names, said once each; both spellings
    at once are refused."""
    renames = getattr(cls, "RENAMES", {})
    if not any(old in data for old in renames):
        return data
    data = dict(data)
    for old, new in renames.items():
        if old in data:
            if new in data:
                raise ConfigError(f"config error: '{prefix}{old}' and '{prefix}{new}' are both set, and '{old}' is "
                                  f"the old name of '{new}'; keep '{new}'")
            _note_renamed(prefix + old, prefix + new)
            data[new] = data.pop(old)
    return data


def rename_tree(cls: type, data: dict, prefix: str = "") -> dict:
    """`data` (a config file's mapping) with every renamed key, at every level, under its new name."""
    if not dataclasses.is_dataclass(cls) or not isinstance(data, dict):
        return data
    data = _rename_keys(cls, data, prefix)
    hints = typing.get_type_hints(cls)
    for name, value in list(data.items()):
        tp = _strip_optional(hints.get(name))
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            data[name] = rename_tree(tp, value, f"{prefix}{name}.")
    return data


def apply_override(data: dict, item: str, cls: Optional[type] = None) -> None:
    parts, value = parse_override(item)
    parts = renamed_path(cls, parts)
    node = data
    for depth, part in enumerate(parts[:-1]):
        if cls is not None:
            _check_known(cls, parts[: depth + 1])
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"config error: override '{item}': '{'.'.join(parts[: depth + 1])}' is not a section")
        node = nxt
    if cls is not None:
        _check_known(cls, parts)
    node[parts[-1]] = value


def _check_known(cls: type, parts: list[str]) -> None:
    """Fail early (with a suggestion) when an override path names a key the schema does not have."""
    current = cls
    for depth, part in enumerate(parts):
        if get_origin(current) is dict:  # a mapping (e.g. maker.resources) takes any key
            return
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"config error: '{'.'.join(parts[:depth])}' is a value, not a section")
        hints = typing.get_type_hints(current)
        fields = [f.name for f in dataclasses.fields(current)]  # not ClassVars (RENAMES)
        if part not in fields:
            _unknown_key(".".join(parts[:depth]), part, fields)
        current = _strip_optional(hints[part])


# keys renamed since a run's config.yaml may have been written: (section, old key) -> what to write instead
RENAMED = {("generation", "compact"): "it is now generation.backend (compact: true -> backend: compact, "
                                      "false -> backend: hf)"}


def _unknown_key(section: str, key: str, valid: list[str]) -> None:
    full = f"{section}.{key}" if section else key
    renamed = RENAMED.get((section.rsplit(".", 1)[-1] if section else "", key))
    if renamed:
        raise ConfigError(f"config error: '{full}' was renamed: {renamed}")
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"did you mean '{section + '.' if section else ''}{close[0]}'?" if close else \
        f"valid keys{' in ' + repr(section) if section else ''}: {', '.join(valid)}"
    raise ConfigError(f"config error: unknown key '{full}'; {hint}")


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) is Union:
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build dataclass `cls` from a plain mapping, checking keys and types recursively."""
    where = prefix.rstrip(".") or "top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config error: '{where}' must be a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    data = _rename_keys(cls, data, prefix)
    for key in data:
        if key not in fields:
            _unknown_key(prefix.rstrip("."), str(key), list(fields))
    kwargs = {}
    for name, f in fields.items():
        tp = hints[name]
        key = prefix + name
        if name in data:
            kwargs[name] = _coerce(tp, data[name], key)
        elif dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, {}, key + ".")
        elif dataclasses.is_dataclass(_strip_optional(tp)):
            kwargs[name] = None  # an optional section the config leaves out (e.g. no critic for GRPO)
        elif f.metadata.get("required"):
            raise ConfigError(f"config error: '{key}' is required and missing; {f.metadata.get('help', '')}")
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is Union:
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key + ".")
    if origin is Union:
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else _type_error(key, value, tp)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"use one of: {', '.join(map(str, choices))}"
            raise ConfigError(f"config error: {key}={value!r} is not allowed; {hint}")
        return value
    if origin in (list, tuple):
        (inner,) = get_args(tp)[:1] or (Any,)
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, value, tp)
        return [_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_type, value_type = get_args(tp) or (str, Any)
        if not isinstance(value, dict):
            raise _type_error(key, value, tp)
        return {_coerce(key_type, k, key): _coerce(value_type, v, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, value, tp)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _type_error(key, value, tp)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 5e-5 without a dot as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise _type_error(key, value, tp)
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise _type_error(key, value, tp)
    raise ConfigError(f"config error: {key}: unsupported field type {tp}")


def _type_error(key: str, value: Any, tp: Any) -> ConfigError:
    return ConfigError(f"config error: {key}={value!r} has type {type(value).__name__}, expected {_type_name(tp)}; "
                       f"fix it in the YAML or override with {key}=<{_type_name(tp)}>")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str) -> None:
    """Write the resolved config, so `--config <run>/config.yaml` reproduces the run (credentials in URLs
    redacted: pass them by rewards.http_headers_env instead)."""
    from coati_ray.storage.uri import is_uri
    from coati_ray.utils.redact import redact_config

    text = yaml.safe_dump(redact_config(to_dict(cfg)), sort_keys=False)
    if is_uri(path):  # a run directory on object storage
        from coati_ray.storage.fs import write_text

        write_text(path, text)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) rows for every field, nested sections flattened with dots."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = _strip_optional(tp)
        if dataclasses.is_dataclass(inner):
            rows.extend(describe(inner, prefix + f.name + "."))
            continue
        if f.metadata.get("required"):
            default = "(required)"
        elif f.default is not dataclasses.MISSING:
            default = repr(f.default)
        else:
            default = repr(f.default_factory())  # type: ignore[misc]
        rows.append((prefix + f.name, _type_name(tp), default, f.metadata.get("help", "")))
        element = get_args(inner)[0] if get_origin(inner) is list and get_args(inner) else None
        if dataclasses.is_dataclass(element):  # a list of sections (rewards.sources): each entry's keys
            rows.extend(describe(element, prefix + f.name + "[]."))
    return rows
