import itertools

import pytest

from tests._postgres import PostgresCluster, postgres_cluster

_db_numbers = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> PostgresCluster:
    """A private PostgreSQL cluster for the whole session (started on first use, stopped and deleted after)."""
    pytest.importorskip("psycopg2", reason="the search extra (psycopg2-binary) is not installed")
    with postgres_cluster() as cluster:
        if isinstance(cluster, str):
            pytest.skip(cluster)
        yield cluster


@pytest.fixture
def postgres_url(postgres: PostgresCluster) -> str:
    """The URL of a fresh, empty database in the private cluster (no Optuna tables yet)."""
    return postgres.create_database(f"test_{next(_db_numbers)}")
