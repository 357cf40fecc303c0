"""Reading pdlab's YAML files (models, hardware, fits, experiments, workloads, sweeps):
one reader and one formatter of validation errors, so that every bad file gets one
line per problem naming the file, the key as the user wrote it, and what was expected."""
from __future__ import annotations

import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A file or a value that pdlab cannot use; the message names the file and the key."""


class Strict(BaseModel):
    """A section of a file: unknown keys are errors."""
    model_config = ConfigDict(extra="forbid")


Schema = TypeVar("Schema", bound=BaseModel)


SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader where PyYAML has it (the same documents, about 10x faster)."""


def parse_yaml(text: str, where: str):
    try:
        return yaml.load(text, Loader=SAFE_LOADER)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {' '.join(str(exc).split())}") from None


def read_mapping(path: str | Path) -> dict:
    """A YAML file holding a mapping of keys to values (an empty file is an empty one)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


def validate(data: Any, schema: type[Schema], where: str, prefix: str = "", context: dict | None = None) -> Schema:
    """`data` as `schema`; a ConfigError with one line per problem if it is not one.
    `prefix` is the key `data` sits under in the file (e.g. "workload")."""
    try:
        return schema.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(explain(exc, where, schema, prefix)) from None


def read_yaml(path: str | Path, schema: type[Schema]) -> Schema:
    return validate(read_mapping(path), schema, str(path))


def explain(exc: ValidationError, where: str, schema: type[BaseModel], prefix: str = "") -> str:
    return "\n".join(f"{where}: {describe(error, schema, prefix)}" for error in exc.errors())


def describe(error: dict, schema: type[BaseModel], prefix: str = "") -> str:
    """One validation error as `key.as.written: what was expected`."""
    kind, context = error["type"], error.get("ctx", {})
    if kind == "extra_forbidden":
        path, parent = _locate(schema, error["loc"][:-1])
        path.append(str(error["loc"][-1]))
        message = f"unknown key{_expected_keys(parent)}"
    else:
        path, _ = _locate(schema, error["loc"])
        message = error["msg"]
    if kind in ("value_error", "assertion_error"):
        message = re.sub(r"^(Value|Assertion) error, ", "", message)
        match = re.match(r"([\w.]+): (.*)", message, re.S)
        if match:
            path += match[1].split(".")
            message = match[2]
    elif kind == "missing":
        message = "missing (required)"
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        path.append(context["discriminator"].strip("'"))
        tags = context.get("expected_tags", "")
        message = (f"expected one of {tags}, got {context['tag']!r}" if kind == "union_tag_invalid"
                   else "missing (required: it says which kind this is)")
    elif kind != "extra_forbidden":
        message = f"{message}, got {error['input']!r}"
    key = ".".join([prefix, *path] if prefix else path)
    return f"{key}: {message}" if key else message


def _members(kind: Any) -> list:
    if get_origin(kind) is Annotated:
        return _members(get_args(kind)[0])
    if get_origin(kind) in (Union, UnionType):
        return [member for arg in get_args(kind) for member in _members(arg)]
    return [kind]


def _is_model(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, BaseModel)


def _tags(model: type[BaseModel]) -> set:
    """The values of the model's one-value Literal fields (its tag in a tagged union)."""
    return {get_args(field.annotation)[0] for field in model.model_fields.values()
            if get_origin(field.annotation) is Literal and len(get_args(field.annotation)) == 1}


def _step(kind: Any, key: Any) -> tuple[Any, bool]:
    """The type found one key further in, and whether the key was a union's tag."""
    members = _members(kind)
    for member in members:
        if len(members) > 1 and _is_model(member) and key in _tags(member):
            return member, True
    for member in members:
        if _is_model(member) and key in member.model_fields:
            return member.model_fields[key].annotation, False
        if get_origin(member) is list and isinstance(key, int):
            return get_args(member)[0], False
        if get_origin(member) is dict:
            return get_args(member)[1], False
    return None, False


def _locate(schema: type[BaseModel], loc: tuple) -> tuple[list[str], Any]:
    """The keys a user wrote (union tags dropped) and the type at the end."""
    kind, path = schema, []
    for key in loc:
        kind, is_tag = _step(kind, key) if kind is not None else (None, False)
        if not is_tag:
            path.append(str(key))
    return path, kind


def _expected_keys(kind: Any) -> str:
    models = [member for member in _members(kind) if _is_model(member)]
    return f"; expected one of {list(models[0].model_fields)}" if len(models) == 1 else ""
