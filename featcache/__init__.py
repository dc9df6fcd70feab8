"""featcache: a feature cache for frozen open_clip models, with pluggable long-tail heads.

The flat public API; the CLI (``featcache ...``) is a thin layer over these.
"""

from featcache.errors import CacheError, DataError, FeatcacheError
from featcache.registry import Registry

__version__ = "0.1.0"

__all__ = ["CacheError", "DataError", "FeatcacheError", "Registry", "__version__"]
