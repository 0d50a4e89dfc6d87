"""mailbak: consistent online backups of LMDB mail stores.

The phases live in their own modules (``backup``, ``verify``, ``restore``, ``gen``); the store
format and its writer library in ``layout`` and ``store``; the parallel file work in the Rust
extension ``mailbak._engine``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mailbak")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"

__all__ = ["__version__"]
