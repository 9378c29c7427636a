r"""Render configuration models as YAML (optionally commented) and as a markdown reference.

The YAML writer is deliberately simple: sections become block mappings, every value is written
in flow style with strings double-quoted (JSON escapes are valid YAML), so ``"\n\n"`` stays
readable and every value reads back exactly.
"""

from __future__ import annotations

import json
import math
import textwrap
import types
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from langchain_rankguide.config._errors import model_classes, union_tag

_WIDTH = 96


def flow_value(value: Any) -> str:
    """Render a plain value as a one-line YAML flow scalar/collection that reads back equal."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return {math.inf: ".inf", -math.inf: "-.inf"}.get(value, ".nan")
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        return text
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, BaseModel):
        return flow_value(value.model_dump(mode="json"))
    if isinstance(value, dict):
        items = ", ".join(
            f"{json.dumps(str(k), ensure_ascii=False)}: {flow_value(v)}" for k, v in value.items()
        )
        return "{" + items + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(flow_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def _comment(text: str, indent: int) -> list[str]:
    pad = " " * indent
    return [f"{pad}# {line}" for line in textwrap.wrap(text, width=_WIDTH - indent - 2)]


def _emit(model: BaseModel, indent: int, comments: bool, lines: list[str]) -> None:
    pad = " " * indent
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if comments and field.description:
            lines.extend(_comment(field.description, indent))
        if isinstance(value, BaseModel):
            lines.append(f"{pad}{name}:")
            _emit(value, indent + 2, comments, lines)
        else:
            lines.append(f"{pad}{name}: {flow_value(value)}")


def to_yaml_text(config: BaseModel, *, comments: bool = False, header: str | None = None) -> str:
    """Render a configuration model as YAML.

    Args:
        config: the (root) configuration model.
        comments: add each field's description as a comment, a blank line between sections,
            and, after an ``hf_local`` LRM section, a commented ``openai_compatible`` example.
        header: comment text put at the top (wrapped; ``None`` for none).

    Returns:
        The YAML text, ending with a newline.
    """
    lines: list[str] = []
    if header:
        for paragraph in header.strip().split("\n"):
            lines.extend(_comment(paragraph, 0) if paragraph else ["#"])
    for name, field in type(config).model_fields.items():
        value = getattr(config, name)
        if comments and lines:
            lines.append("")
        if comments and field.description:
            lines.extend(_comment(field.description, 0))
        if isinstance(value, BaseModel):
            lines.append(f"{name}:")
            _emit(value, 2, comments, lines)
            if comments and name == "lrm" and union_tag(type(value)) == "hf_local":
                lines.extend(_remote_lrm_example(config, name))
        else:
            lines.append(f"{name}: {flow_value(value)}")
    return "\n".join(lines) + "\n"


def _remote_lrm_example(config: BaseModel, name: str) -> list[str]:
    field = type(config).model_fields[name]
    remote = [m for m in model_classes(field.annotation) if union_tag(m) == "openai_compatible"]
    if not remote:
        return []
    example = remote[0].model_validate(
        {"base_url": "http://localhost:8000/v1", "model": "served-model-name"}
    )
    body: list[str] = []
    _emit(example, 2, False, body)
    return [
        "# For a remote OpenAI-compatible server (vLLM, SGLang, Ollama) use instead:",
        f"# {name}:",
        *(f"# {line}" for line in body),
    ]


# --------------------------------------------------------------------------- markdown


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _constraints(metadata: list[Any]) -> list[str]:
    out: list[str] = []
    for item in metadata:
        if isinstance(item, annotated_types.Gt):
            out.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Ge):
            out.append(f">= {item.ge}")
        elif isinstance(item, annotated_types.Lt):
            out.append(f"< {item.lt}")
        elif isinstance(item, annotated_types.Le):
            out.append(f"<= {item.le}")
        elif isinstance(item, annotated_types.MinLen) and item.min_length == 1:
            out.append("non-empty")
    return out


def type_name(annotation: Any) -> str:
    """Return a short human-readable name of a field annotation."""
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin in (Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        suffix = " or null" if type(None) in args else ""
        return " or ".join(names) + suffix
    if hasattr(annotation, "__metadata__") and args:
        extra = _constraints(list(annotation.__metadata__))
        for meta in annotation.__metadata__:
            if isinstance(meta, FieldInfo):
                extra.extend(_constraints(meta.metadata))
        base = type_name(args[0])
        return f"{base} ({', '.join(extra)})" if extra else base
    if origin is list:
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _field_type(field: FieldInfo) -> str:
    name = type_name(field.annotation)
    extra = _constraints(field.metadata)
    return f"{name} ({', '.join(extra)})" if extra else name


def _field_default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    default = field.get_default(call_default_factory=True, validated_data={})
    return f"`{flow_value(default)}`"


def _table(
    model: type[BaseModel], prefix: str, lines: list[str]
) -> list[tuple[str, type[BaseModel]]]:
    nested: list[tuple[str, type[BaseModel]]] = []
    lines.append("| Key | Type | Default | Description |")
    lines.append("|---|---|---|---|")
    for name, field in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        subs = model_classes(field.annotation)
        if len(subs) == 1:
            nested.append((path, subs[0]))
            continue
        lines.append(
            f"| `{path}` | {_escape(_field_type(field))} | {_escape(_field_default(field))} "
            f"| {_escape(field.description or '')} |"
        )
    return nested


def _section(
    title: str,
    model: type[BaseModel],
    prefix: str,
    description: str | None,
    level: int,
    lines: list[str],
) -> None:
    lines.append(f"{'#' * min(level, 6)} {title}")
    lines.append("")
    text = description or (model.__doc__ or "").strip().split("\n")[0]
    if text:
        lines.append(text)
        lines.append("")
    nested = _table(model, prefix, lines)
    lines.append("")
    for path, sub in nested:
        parent_field = model.model_fields[path.rsplit(".", 1)[-1]]
        _section(f"`{path}`", sub, path, parent_field.description, level + 1, lines)


def reference_markdown(root: type[BaseModel]) -> str:
    """Document every field of ``root`` (path, type, default, description) as markdown tables.

    Sections become ``##`` headings; the members of a union section (``lrm``) get one ``###``
    heading each, keyed by their ``provider``.

    Args:
        root: the root configuration model.

    Returns:
        The markdown text, ending with a newline.
    """
    lines: list[str] = []
    top_level = [
        (name, field)
        for name, field in root.model_fields.items()
        if not model_classes(field.annotation)
    ]
    if top_level:
        lines += ["## Top level", "", "| Key | Type | Default | Description |", "|---|---|---|---|"]
        for name, field in top_level:
            lines.append(
                f"| `{name}` | {_escape(_field_type(field))} | {_escape(_field_default(field))} "
                f"| {_escape(field.description or '')} |"
            )
        lines.append("")
    for name, field in root.model_fields.items():
        subs = model_classes(field.annotation)
        if len(subs) == 1:
            _section(f"`{name}`", subs[0], name, field.description, 2, lines)
        elif len(subs) > 1:
            lines += [f"## `{name}`", "", field.description or "", ""]
            for sub in subs:
                title = f"`{name}` with `provider: {union_tag(sub)}`"
                _section(title, sub, name, None, 3, lines)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"
