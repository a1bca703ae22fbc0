"""Every table of the service, in one MetaData, for Alembic's autogenerate and for tests."""

from bot.storage import tables as _tables  # noqa: F401  (registers the service tables)
from rag.manifest import metadata

__all__ = ["metadata"]
