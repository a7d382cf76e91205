"""Typed, validated run configuration (:mod:`.run`) and the named privacy presets (:mod:`.presets`)."""

from clicooper.config.run import (
    DataOptions,
    DPConfig,
    HeadDPSGDConfig,
    LabelConfig,
    RunConfig,
    WatermarkConfig,
    load_config_file,
    make_config,
    parse_capacities,
    parse_range,
)

__all__ = ["DataOptions", "DPConfig", "HeadDPSGDConfig", "LabelConfig", "RunConfig", "WatermarkConfig",
           "load_config_file", "make_config", "parse_capacities", "parse_range"]
