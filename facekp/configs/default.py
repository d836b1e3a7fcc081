"""The base config that experiment files start from: facekp.train.default_config, where every
field is declared with its type and comment (--print_config lists them)."""
from facekp.train.default_config import get_config

__all__ = ["get_config"]
