import pytest

from patternalarm.db import SQL_DIR, MigrationError, discover


def test_shipped_migrations_are_ordered_and_unique():
    migrations = discover()
    versions = [m.version for m in migrations]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert versions[0] == 1


def test_core_schema_has_the_tables_later_layers_need():
    sql = (SQL_DIR / "001_core_schema.sql").read_text()
    for table in ("incidents", "stream_batches", "stream_metrics", "ground_truth",
                  "load_runs", "chaos_runs"):
        assert f"CREATE TABLE {table} (" in sql


def test_badly_named_file_is_refused(tmp_path):
    (tmp_path / "001_ok.sql").write_text("select 1;")
    (tmp_path / "2_missing_padding.sql").write_text("select 1;")
    with pytest.raises(MigrationError, match="2_missing_padding.sql"):
        discover(tmp_path)


def test_duplicate_versions_are_refused(tmp_path):
    (tmp_path / "001_a.sql").write_text("select 1;")
    (tmp_path / "001_b.sql").write_text("select 2;")
    with pytest.raises(MigrationError, match="share a version"):
        discover(tmp_path)
