"""Checks of a valid configuration against this machine (``rankguide config validate``).

The configuration itself never imports torch (see :mod:`langchain_rankguide.config`); these
checks do, lazily, so they run where a command is about to use the models, not on import.
"""

from __future__ import annotations

from langchain_rankguide.config.models import RankGuideConfig
from langchain_rankguide.errors import ConfigError


def check_environment(config: RankGuideConfig, *, source: str = "<config>") -> None:
    """Refuse a configuration this machine cannot run: a device torch does not have.

    Args:
        config: a validated configuration.
        source: the file name used in the error message.

    Raises:
        ConfigError: one line naming ``source``, the field and why, e.g.
            ``cfg.yaml: srm.device: 'cuda' is not available: CUDA is not available (...)``.
    """
    from langchain_rankguide.engine.loading import device_problem

    devices = {"srm": config.srm.device}
    if config.lrm.provider == "hf_local":
        devices["lrm"] = config.lrm.device
    for role, device in devices.items():
        problem = device_problem(device)
        if problem:
            raise ConfigError(f"{source}: {role}.device: {device!r} cannot be used: {problem}")
