"""The model zoo: spatial and channel mixers, the MetaFormer backbone and named presets.

Importable without `ablate`: `blocks.create("tiny", spatial="attention")`.
"""
from .backbone import MetaFormer
from .config import MetaFormerConfig
from .channel import CHANNEL
from .errors import ConfigError
from .presets import PRESETS, create, preset_config
from .spatial import SPATIAL
from .timm_convert import from_timm

__all__ = ["CHANNEL", "SPATIAL", "PRESETS", "ConfigError", "MetaFormer", "MetaFormerConfig", "create",
           "from_timm", "preset_config"]
