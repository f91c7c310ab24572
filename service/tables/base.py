"""The declarative base: the constraint naming convention, and the column types every table shares."""

from __future__ import annotations

from sqlalchemy import (
    DateTime,
    MetaData,
    Numeric,
)
from sqlalchemy.orm import DeclarativeBase

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


Money = Numeric(20, 10)


TZDateTime = DateTime(timezone=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def table_names() -> list[str]:
    return [t.name for t in Base.metadata.sorted_tables]
