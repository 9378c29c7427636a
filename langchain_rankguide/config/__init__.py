r"""RankGuide configuration: a YAML file validated by a tree of frozen pydantic models.

Loading never imports torch, transformers or LangChain.

Example:
    >>> from langchain_rankguide.config import load_config
    >>> cfg = load_config(None, overrides={"routing": {"policy": "srm"}})
    >>> cfg.routing.policy, cfg.steps.delimiter
    ('srm', '\n\n')

Every invalid file raises one :class:`~langchain_rankguide.errors.ConfigError` whose message
names the file, each bad field path and the problem, e.g.
``cfg.yaml: srm.threads: must be >= 1 (got 0)``.
"""

from __future__ import annotations

from langchain_rankguide.config.environment import check_environment
from langchain_rankguide.config.loader import (
    DEFAULT_CONFIG_RESOURCE,
    DOCS_MARKER,
    config_json_schema,
    config_json_schema_text,
    config_reference_markdown,
    default_yaml_text,
    dump_default_yaml,
    load_config,
    merge_overrides,
    parse_config,
    parse_yaml,
    update_reference_doc,
)
from langchain_rankguide.config.models import (
    CONFIG_VERSION,
    DEMO_CALIBRATION,
    DEMO_MODELS,
    POSTGRES_URL_ENV,
    CheckpointConfig,
    HFLocalLRMConfig,
    HFModelConfig,
    LRMConfig,
    OpenAICompatibleLRMConfig,
    PromptConfig,
    RankGuideConfig,
    ReplyLimitConfig,
    RetryConfig,
    RoutingConfig,
    SamplingConfig,
    SignalsConfig,
    SteeringConfig,
    StepsConfig,
    TimeoutsConfig,
    postgres_url_problem,
)

__all__ = [
    "CONFIG_VERSION",
    "DEFAULT_CONFIG_RESOURCE",
    "DEMO_CALIBRATION",
    "DEMO_MODELS",
    "DOCS_MARKER",
    "POSTGRES_URL_ENV",
    "CheckpointConfig",
    "HFLocalLRMConfig",
    "HFModelConfig",
    "LRMConfig",
    "OpenAICompatibleLRMConfig",
    "PromptConfig",
    "RankGuideConfig",
    "ReplyLimitConfig",
    "RetryConfig",
    "RoutingConfig",
    "SamplingConfig",
    "SignalsConfig",
    "SteeringConfig",
    "StepsConfig",
    "TimeoutsConfig",
    "check_environment",
    "config_json_schema",
    "config_json_schema_text",
    "config_reference_markdown",
    "default_yaml_text",
    "dump_default_yaml",
    "load_config",
    "merge_overrides",
    "parse_config",
    "parse_yaml",
    "postgres_url_problem",
    "update_reference_doc",
]
