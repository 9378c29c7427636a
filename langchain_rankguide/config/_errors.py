"""Turn pydantic validation errors into one readable :class:`ConfigError` line.

Every problem is named by its dotted field path (``srm.threads``, ``lrm.timeouts.read``,
``srm.signal_layers[1]``) and says what is wrong; unknown keys get a did-you-mean suggestion.
The raw values of secret-looking keys are never echoed.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Sequence
from typing import Any, NoReturn, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

SECRET_KEYS = frozenset(
    {
        "api_key",
        "apikey",
        "api-key",
        "api_token",
        "access_token",
        "auth_token",
        "token",
        "secret",
        "secret_key",
        "password",
        "authorization",
        "bearer",
        "openai_api_key",
    }
)
"""Keys that look like a literal secret; they are rejected with a pointer to ``api_key_env``."""

SENSITIVE_FIELDS = frozenset({"api_key_env", "postgres_url", "postgres_url_env"})
"""Fields whose rejected value is never echoed (it may be a key pasted in the wrong place)."""

CUSTOM_ERROR = "rankguide"
"""Error type of the package's own validation errors."""


def fail(message: str, *, subfield: str | None = None) -> NoReturn:
    """Raise a validation error whose message is used verbatim.

    Args:
        message: what is wrong, without the field path (the formatter adds it).
        subfield: a field name to append to the error location, for checks made by a
            model-level validator that concern one field (e.g. ``vector`` in ``steering``).

    Raises:
        PydanticCustomError: always.
    """
    raise PydanticCustomError(CUSTOM_ERROR, "{message}", {"message": message, "subfield": subfield})


def suggest(word: str, choices: Sequence[str]) -> str | None:
    """Return the choice closest to ``word`` (difflib, then prefix/containment), or ``None``."""
    if not isinstance(word, str):
        return None
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    if close:
        return lowered[close[0]]
    for choice in choices:
        low = choice.lower()
        if len(word) >= 3 and (low.startswith(word.lower()) or word.lower() in low):
            return choice
    return None


def join_path(parts: Sequence[str | int]) -> str:
    """Join location parts into a dotted path.

    ``("srm", "signal_layers", 1)`` gives ``srm.signal_layers[1]``.
    """
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def show_value(value: Any) -> str:
    """Render a rejected input briefly, YAML-style (``true``, ``null``, ``'text'``, ``a list``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "...'"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def model_classes(annotation: Any) -> list[type[BaseModel]]:
    """Return the pydantic model classes an annotation can hold (through unions/Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = get_origin(annotation)
    if origin is None:
        return []
    args = get_args(annotation)
    if origin is list or origin is dict:
        return []
    if origin in (Union, types.UnionType):
        return [m for arg in args for m in model_classes(arg)]
    # typing.Annotated
    if args and hasattr(annotation, "__metadata__"):
        return model_classes(args[0])
    return []


def union_tag(model: type[BaseModel]) -> str | None:
    """Return the ``provider`` literal of a union member model, if it has one."""
    field = model.model_fields.get("provider")
    if field is None:
        return None
    args = get_args(field.annotation)
    return str(args[0]) if args else None


def walk(root: type[BaseModel], loc: Sequence[str | int]) -> tuple[list[str | int], Any]:
    """Follow a pydantic error location through the model tree.

    Args:
        root: the model class validation started from.
        loc: the error location, possibly holding union tags (``("lrm", "hf_local", "x")``).

    Returns:
        The user-facing path parts (union tags removed) and the model class reached at the
        end of ``loc`` (``None`` when the location leaves the model tree).
    """
    parts: list[str | int] = []
    current: Any = root
    pending: list[type[BaseModel]] = []
    for part in loc:
        if pending:
            tagged = [m for m in pending if union_tag(m) == part]
            pending = []
            if tagged:
                current = tagged[0]
                continue
            current = None
        parts.append(part)
        if current is None or isinstance(part, int):
            current = None
            continue
        field = current.model_fields.get(part)
        if field is None:
            current = None
            continue
        models = model_classes(field.annotation)
        if len(models) == 1:
            current = models[0]
        elif len(models) > 1:
            pending = models
            current = None
        else:
            current = None
    return parts, current


def _choices(expected: str) -> list[str]:
    return re.findall(r"'((?:[^'\\]|\\.)*)'", expected)


_TYPE_MESSAGES = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
}

_BOUNDS = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
}


def describe_error(root: type[BaseModel], err: Any) -> str:
    """Describe one pydantic error dict as ``path: problem``."""
    loc: Sequence[str | int] = err.get("loc", ())
    kind: str = err.get("type", "")
    ctx: dict[str, Any] = err.get("ctx") or {}
    value = err.get("input")
    parts, _ = walk(root, loc)
    if kind == CUSTOM_ERROR and ctx.get("subfield"):
        parts.append(ctx["subfield"])
    path = join_path(parts)
    sensitive = bool(parts) and str(parts[-1]) in SENSITIVE_FIELDS

    if kind == "extra_forbidden":
        return _describe_unknown_key(root, loc, parts)
    if kind == "invalid_key" or (parts and parts[-1] == "[key]"):
        owner = join_path(parts[:-2] if parts[-1:] == ["[key]"] else parts[:-1])
        problem = f"keys must be strings (got {show_value(value)})"
        return f"{owner}: {problem}" if owner else problem
    if not parts and kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"the top level must be a mapping of sections (got {show_value(value)})"

    got = "" if sensitive else f" (got {show_value(value)})"
    if kind == CUSTOM_ERROR:
        problem = str(ctx.get("message", err.get("msg", "")))
        got = ""
    elif kind == "missing":
        problem, got = "is required", ""
    elif kind in _BOUNDS:
        op, key = _BOUNDS[kind]
        problem = f"must be {op} {ctx.get(key)}"
    elif kind == "literal_error":
        choices = _choices(str(ctx.get("expected", "")))
        problem = "must be one of " + ", ".join(repr(c) for c in choices)
        hint = suggest(value, choices) if isinstance(value, str) else None
        if hint and not sensitive:
            got = f" (got {show_value(value)}; did you mean {hint!r}?)"
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        path = join_path([*parts, "provider"])
        choices = _choices(str(ctx.get("expected_tags", "")))
        problem = "must be one of " + ", ".join(repr(c) for c in choices)
        tag = ctx.get("tag")
        if tag is None:
            got = " (missing)"
        else:
            hint = suggest(str(tag), choices)
            got = f" (got {tag!r}; did you mean {hint!r}?)" if hint else f" (got {tag!r})"
    elif kind in ("string_too_short", "too_short"):
        problem = "must not be empty"
    elif kind in _TYPE_MESSAGES:
        problem = _TYPE_MESSAGES[kind]
    else:
        msg = str(err.get("msg", kind))
        problem = msg[:1].lower() + msg[1:]
    return f"{path}: {problem}{got}" if path else f"{problem}{got}"


def _describe_unknown_key(
    root: type[BaseModel], loc: Sequence[str | int], parts: list[str | int]
) -> str:
    key = str(parts[-1]) if parts else "?"
    where = join_path(parts[:-1])
    _, container = walk(root, loc[:-1])
    if key.lower() in SECRET_KEYS:
        if container is not None and "api_key_env" in container.model_fields:
            env_field = join_path([*parts[:-1], "api_key_env"])
            target = f"put it in an environment variable and set {env_field} to its name"
        else:
            target = "pass it through an environment variable (see lrm.api_key_env)"
        return f"{join_path(parts)}: secrets must not be written in the config file; {target}"
    fields = list(container.model_fields) if container is not None else []
    noun, place = ("key", f"in {where}") if where else ("section", "at the top level")
    message = f"unknown {noun} {key!r} {place}"
    hint = suggest(key, fields)
    if hint:
        message += f" (did you mean {hint!r}?)"
    elif container is not None and union_tag(container) is not None:
        other = _other_provider_with(root, loc[:-1], key)
        if other:
            message += f" (it belongs to provider {other!r})"
    if fields and not hint:
        message += f"; allowed: {', '.join(fields)}"
    return message


def _other_provider_with(
    root: type[BaseModel], container_loc: Sequence[str | int], key: str
) -> str | None:
    """Name the other union member (``provider``) that has field ``key``, if any."""
    if len(container_loc) < 2:
        return None
    _, parent = walk(root, container_loc[:-2])
    if parent is None:
        return None
    field = parent.model_fields.get(str(container_loc[-2]))
    if field is None:
        return None
    for model in model_classes(field.annotation):
        if key in model.model_fields:
            return union_tag(model)
    return None


def format_validation_error(exc: ValidationError, source: str, root: type[BaseModel]) -> str:
    """Format every problem of ``exc`` into one line prefixed with ``source``.

    Args:
        exc: the pydantic error.
        source: the file name (or ``<dict>``) the data came from.
        root: the model class validation started from.

    Returns:
        ``"<source>: <path>: <problem>"``, or ``"<source>: N problems: a; b; c"``.
    """
    problems: list[str] = []
    for err in exc.errors(include_url=False):
        text = describe_error(root, err)
        if text not in problems:
            problems.append(text)
    if len(problems) == 1:
        return f"{source}: {problems[0]}"
    return f"{source}: {len(problems)} problems: " + "; ".join(problems)
