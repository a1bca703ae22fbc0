"""One migration history on SQLite and PostgreSQL; start-up refuses a database not at head."""

import pytest
from sqlalchemy import inspect

from bot.storage.database import create_db_engine, current_revision, ensure_schema, head_revision, upgrade
from bot.storage.schema import metadata
from rag.errors import ConfigError
from rag.manifest import FileRecord, ManifestRepository


def test_upgrade_creates_every_table_of_the_metadata(db_url: str) -> None:
    engine = create_db_engine(db_url)
    with pytest.raises(ConfigError, match="perimeter db upgrade"):
        ensure_schema(engine, db_url, auto_upgrade=False)
    upgrade(db_url)
    assert current_revision(engine) == head_revision(db_url)
    ensure_schema(engine, db_url, auto_upgrade=False)
    assert set(metadata.tables) <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_manifest_round_trip(db_url: str) -> None:
    engine = create_db_engine(db_url)
    ensure_schema(engine, db_url, auto_upgrade=True)
    with engine.begin() as c:
        repo = ManifestRepository(c)
        repo.add_collection("kb_a", "m1", 384, 12.5)
        assert repo.active_collection() is None
        repo.save_file("kb_a", FileRecord("/kb", "a.md", "0" * 64, 10, 123, ["p1", "p2"]))
        repo.activate("kb_a")
        assert repo.bump_version("kb_a", ["/kb"]) == 1
    with engine.begin() as c:
        repo = ManifestRepository(c)
        active = repo.active_collection()
        assert active is not None and active.roots == ["/kb"] and active.avg_len == 12.5
        assert repo.files("kb_a", "/kb")["a.md"].point_ids == ["p1", "p2"]
        repo.add_collection("kb_b", "m2", 384, 10)
        assert repo.activate("kb_b") == ["kb_a"]
        assert repo.active_collection().name == "kb_b"  # type: ignore[union-attr]
    engine.dispose()


def test_the_migrations_match_the_tables_the_code_declares(db_url: str) -> None:
    """A table or column added to the code without a migration fails here, not in production."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = create_db_engine(db_url)
    upgrade(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diff == []
