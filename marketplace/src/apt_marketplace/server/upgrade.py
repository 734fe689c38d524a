"""Bring a database made by an earlier version up to the current tables: `create_all` makes
missing tables but never touches existing ones, so columns added since are added here, with
defaults that give old rows their old meaning (releases stay published, packages unreviewed-ok)."""

from __future__ import annotations

from sqlalchemy import Engine, MetaData, inspect, text

__all__ = ["add_missing_columns"]


def add_missing_columns(engine: Engine, metadata: MetaData) -> list[str]:
    """Returns `table.column` for each column added."""
    added = []
    existing_tables = set(inspect(engine).get_table_names())
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            if table.name not in existing_tables:
                continue
            have = {c["name"] for c in inspect(conn).get_columns(table.name)}
            for column in table.columns:
                if column.name in have:
                    continue
                ddl = f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {column.type.compile(dialect=engine.dialect)}'
                default = column.server_default
                if default is not None:
                    ddl += f" DEFAULT '{default.arg}' NOT NULL"  # type: ignore[attr-defined]
                conn.execute(text(ddl))
                added.append(f"{table.name}.{column.name}")
            for index in table.indexes:
                index.create(conn, checkfirst=True)
    return added
