"""Load configuration files: YAML parsing, overrides, path resolution, defaults and docs."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Hashable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from langchain_rankguide.config.models import DEMO_CALIBRATION, RankGuideConfig
from langchain_rankguide.config.render import reference_markdown, to_yaml_text
from langchain_rankguide.errors import ConfigError

DEFAULT_CONFIG_RESOURCE = "defaults/demo.yaml"
"""The embedded default configuration, relative to the package."""

DOCS_MARKER = "<!-- generated reference below: `rankguide config docs`; do not edit by hand -->"
"""Line in ``docs/configuration.md`` after which the generated reference starts."""

MAX_CONFIG_BYTES = 1 << 20
"""Largest configuration file read (1 MiB); a real one is a few kilobytes."""

MAX_NESTING = 64
"""Deepest nesting of mappings and lists accepted in a configuration file."""

MAX_VALUES = 1_000_000
"""Most values (scalars, mappings, lists, aliases counted each time they are used) in a file."""

_MODEL_PATHS = {("srm", "model"), ("lrm", "model"), ("lrm", "tokenizer")}
_FILE_PATHS = {("routing", "calibration"), ("steering", "vector"), ("checkpoint", "sqlite_path")}

DEFAULT_YAML_HEADER = """\
RankGuide configuration (format version 1): the embedded demo defaults.
Every field is shown with its default; delete what you do not change.
Relative paths resolve against this file's directory. Secrets never go in this file: name an
environment variable instead (lrm.api_key_env).
Reference: docs/configuration.md (`rankguide config docs`).
Check a file with `rankguide config validate PATH`.
"""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects duplicate keys instead of keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                first = seen[key].start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    f"the first is at line {first}",
                    None,
                    f"duplicate key {key!r}",
                    key_node.start_mark,
                )
            if isinstance(key, Hashable):
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text safely (no Python object tags; duplicate keys rejected).

    Args:
        text: the YAML document.
        source: the file name used in error messages.

    Returns:
        The parsed data (``{}`` for an empty document).

    Raises:
        ConfigError: a syntax error (with line and column) or a duplicate key.
    """
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except RecursionError:
        # PyYAML composes nested collections recursively; a few hundred levels exhaust the stack.
        raise ConfigError(f"{source}: nesting deeper than {MAX_NESTING} levels") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        if problem.startswith("duplicate key"):
            raise ConfigError(f"{source}: {problem}{where} ({exc.context})") from None
        raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from None
    except yaml.YAMLError as exc:  # e.g. a control character the reader refuses
        raise ConfigError(f"{source}: invalid YAML: {' '.join(str(exc).split())}") from None
    check_shape(data, source)
    return {} if data is None else data


def check_shape(data: Any, source: str) -> None:
    """Refuse data nested deeper than :data:`MAX_NESTING` or holding over :data:`MAX_VALUES` values.

    The walk is iterative and counts a value reached through several YAML aliases each time, so
    an alias bomb ("billion laughs") is refused after a bounded amount of work, before
    validation or rendering walks it.

    Raises:
        ConfigError: naming ``source`` and the bound exceeded.
    """
    pending: list[tuple[Any, int]] = [(data, 0)]
    seen = 0
    while pending:
        value, depth = pending.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise ConfigError(f"{source}: more than {MAX_VALUES:,} values (repeated YAML aliases?)")
        if isinstance(value, Mapping):
            children: Any = [*value.keys(), *value.values()]
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth >= MAX_NESTING:
            raise ConfigError(f"{source}: nesting deeper than {MAX_NESTING} levels")
        pending.extend((child, depth + 1) for child in children)


def _expand_dotted(data: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            value = _expand_dotted(value)
        if isinstance(key, str) and "." in key:
            head, rest = key.split(".", 1)
            value = _expand_dotted({rest: value})
            key = head
            if isinstance(out.get(key), Mapping):
                out[key] = merge_overrides(out[key], value)
                continue
        out[key] = value
    return out


def merge_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` into ``base`` (neither is modified).

    Mappings merge key by key; any other value replaces. Keys may be dotted
    (``{"routing.policy": "srm"}`` equals ``{"routing": {"policy": "srm"}}``). A mapping that
    sets a different ``provider`` replaces the old mapping instead of merging into it, so
    ``{"lrm": {"provider": "openai_compatible", ...}}`` does not inherit ``hf_local`` keys.

    Args:
        base: the configuration data.
        overrides: nested changes.

    Returns:
        The merged data.
    """
    out: dict[str, Any] = dict(base)
    for key, value in _expand_dotted(overrides).items():
        old = out.get(key)
        if (
            isinstance(value, Mapping)
            and isinstance(old, Mapping)
            and ("provider" not in value or value.get("provider") == old.get("provider"))
        ):
            out[key] = merge_overrides(old, value)
        else:
            out[key] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return list(value)
    return value


def _absolutize_override_paths(overrides: dict[str, Any]) -> dict[str, Any]:
    """Make relative local paths given as overrides absolute against the working directory."""
    cwd = Path.cwd()
    out = dict(overrides)
    for section, key in _MODEL_PATHS | _FILE_PATHS:
        block = out.get(section)
        if not isinstance(block, Mapping) or not isinstance(block.get(key), str):
            continue
        value: str = block[key]
        if not value or value.startswith("demo:") or value == DEMO_CALIBRATION:
            continue
        candidate = Path(os.path.expanduser(value))
        is_pathlike = value.startswith(("/", "./", "../", "~")) or value in (".", "..")
        if (section, key) in _FILE_PATHS or is_pathlike or (cwd / candidate).exists():
            if not candidate.is_absolute():
                candidate = cwd / candidate
            out[section] = {**block, key: os.path.normpath(candidate)}
    return out


def parse_config(
    data: Any, *, source: str = "<dict>", base_dir: str | Path | None = None
) -> RankGuideConfig:
    """Validate configuration data.

    Args:
        data: the top-level mapping (as ``yaml.safe_load`` gives it).
        source: the name used in error messages (a file path, or ``<dict>``).
        base_dir: the directory relative paths resolve against (default: working directory).

    Returns:
        The validated configuration.

    Raises:
        ConfigError: one line naming ``source``, each bad field path and its problem.
    """
    if not isinstance(data, Mapping):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__}"
        if isinstance(data, str | int | float | bool):
            kind += f" ({data!r})"
        raise ConfigError(f"{source}: the top level must be a mapping of sections (got {kind})")
    context = {"base_dir": Path(base_dir) if base_dir is not None else Path.cwd(), "source": source}
    return RankGuideConfig.model_validate(dict(data), context=context)


def read_config_text(file: Path, source: str) -> str:
    """Read a configuration file's text, refusing anything but a small regular file.

    Devices (``/dev/zero``), FIFOs and sockets are refused before they are opened, so reading
    neither hangs nor runs without end; a file over :data:`MAX_CONFIG_BYTES` is refused, and at
    most that many bytes are ever read (a file growing meanwhile changes nothing).

    Raises:
        ConfigError: the file is missing, not a regular file, too large, unreadable or not UTF-8.
    """
    try:
        info = file.stat()
    except FileNotFoundError:
        shown = str(file) if file.is_absolute() else f"{file} (looked in {file.absolute()})"
        raise ConfigError(f"config file not found: {shown}") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read config file: {exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{source}: is a directory, not a config file")
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{source}: not a regular file (a device, FIFO or socket)")
    if info.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{source}: {info.st_size:,} bytes, more than a config file may hold "
            f"({MAX_CONFIG_BYTES:,})"
        )
    try:
        with file.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{source}: more than a config file may hold ({MAX_CONFIG_BYTES:,})")
        return raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read config file: {exc}") from None


def default_yaml_text() -> str:
    """Return the text of the embedded default configuration (``defaults/demo.yaml``)."""
    return (
        resources.files("langchain_rankguide").joinpath(DEFAULT_CONFIG_RESOURCE).read_text("utf-8")
    )


def load_config(
    path: str | Path | None = None, *, overrides: Mapping[str, Any] | None = None
) -> RankGuideConfig:
    """Load and validate a YAML configuration file.

    Args:
        path: the YAML file; ``None`` for the embedded demo defaults.
        overrides: nested (or dotted-key) changes deep-merged into the file's data before
            validation, e.g. ``{"routing": {"policy": "srm"}}``. Relative paths in overrides
            resolve against the working directory; those in the file against its directory.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: the file is missing, unreadable, not valid YAML, or invalid; the message
            names the file and the field path.
    """
    if path is None:
        source = f"<default config {DEFAULT_CONFIG_RESOURCE}>"
        text = default_yaml_text()
        base_dir = Path.cwd()
    else:
        file = Path(path).expanduser()
        source = str(path)
        text = read_config_text(file, source)
        base_dir = file.absolute().parent
    data = parse_yaml(text, source)
    if overrides:
        if not isinstance(data, Mapping):
            parse_config(data, source=source)  # raises the top-level error
        data = merge_overrides(data, _absolutize_override_paths(_expand_dotted(overrides)))
    return parse_config(data, source=source, base_dir=base_dir)


def dump_default_yaml() -> str:
    """Return the commented starter YAML (what ``rankguide config init`` writes).

    Its content equals the defaults: ``load_config`` of it gives ``RankGuideConfig()``. The
    embedded ``defaults/demo.yaml`` is this text.
    """
    return to_yaml_text(RankGuideConfig(), comments=True, header=DEFAULT_YAML_HEADER)


def config_reference_markdown() -> str:
    """Return the markdown reference of every configuration field, generated from the models."""
    return reference_markdown(RankGuideConfig)


def config_json_schema() -> dict[str, Any]:
    """Return the JSON schema of the configuration file."""
    schema = RankGuideConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "RankGuide configuration"
    return schema


def config_json_schema_text() -> str:
    """Return :func:`config_json_schema` as indented JSON text."""
    return json.dumps(config_json_schema(), indent=2) + "\n"


def update_reference_doc(path: str | Path) -> bool:
    """Rewrite the generated part of a markdown file (after :data:`DOCS_MARKER`).

    Args:
        path: the markdown file; created with a minimal intro if missing.

    Returns:
        ``True`` if the file changed.
    """
    file = Path(path)
    old = (
        file.read_text(encoding="utf-8") if file.exists() else f"# Configuration\n\n{DOCS_MARKER}\n"
    )
    if DOCS_MARKER not in old:
        raise ConfigError(f"{file}: marker line not found: {DOCS_MARKER}")
    intro = old.split(DOCS_MARKER, 1)[0]
    new = f"{intro}{DOCS_MARKER}\n\n{config_reference_markdown()}"
    if new == old:
        return False
    file.write_text(new, encoding="utf-8")
    return True
