"""Every table of the service, in one MetaData, for Alembic's autogenerate and for tests."""

from rag.manifest import metadata

__all__ = ["metadata"]
