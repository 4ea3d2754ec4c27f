"""A stack's configuration: what to run (venv, backend, executor, DAGs, components) and the Airflow settings every
component gets as AIRFLOW__SECTION__KEY environment variables."""

from __future__ import annotations

import dataclasses
import os
import secrets
import socket
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
EXAMPLE_DAGS = REPO / "examples" / "dags"
PG_URL = os.environ.get("MEMSERIES_PG_URL", "postgresql://postgres@127.0.0.1:5432")
STANDARD_COMPONENTS = ("api-server", "dag-processor", "scheduler")


class StackError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_key(section: str, key: str) -> str:
    return f"AIRFLOW__{section.upper()}__{key.upper()}"


@dataclasses.dataclass
class Component:
    """One long-running process of the stack: ``argv`` is run with the venv's bin/ first on PATH."""

    name: str
    argv: list[str]
    env: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class StackConfig:
    venv: Path
    label: str = ""
    backend: str = "sqlite"  # or "postgres"
    executor: str = "LocalExecutor"
    parallelism: int = 4
    #: DAG files (or directories whose *.py files are taken) copied into AIRFLOW_HOME/dags
    dags: list[Path] = dataclasses.field(default_factory=lambda: [EXAMPLE_DAGS])
    #: seconds between forced gc.collect() in every forked child; 0/None disables aging
    age_interval: float | None = 30.0
    #: extra [section] key = value settings, e.g. {("dag_processor", "preload_modules"): "numpy"}
    config: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    #: extra plain environment variables for every component
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    #: extra components started after the standard ones (e.g. celery workers for a CeleryExecutor stack)
    extra_components: list[Component] = dataclasses.field(default_factory=list)
    #: replace the standard components entirely (names: api-server, dag-processor, scheduler)
    components: list[str] = dataclasses.field(default_factory=lambda: list(STANDARD_COMPONENTS))
    pg_url: str = PG_URL
    keep_home: bool = False
    home_parent: Path | None = None
    migrate_timeout: float = 600.0
    start_timeout: float = 240.0
    #: seconds a stop gives the components after SIGTERM before SIGKILL (all groups signalled at once)
    stop_grace: float = 8.0


def default_config(cfg: StackConfig, port: int, home: Path, db_uri: str) -> dict[str, str]:
    """The AIRFLOW__ environment every component gets (same secrets everywhere)."""
    jwt = secrets.token_hex(32)
    settings: dict[tuple[str, str], str] = {
        ("core", "executor"): cfg.executor,
        ("core", "parallelism"): str(cfg.parallelism),
        ("core", "dags_folder"): str(home / "dags"),
        ("core", "load_examples"): "False",
        ("core", "dags_are_paused_at_creation"): "False",
        ("core", "execution_api_server_url"): f"http://127.0.0.1:{port}/execution/",
        ("core", "min_serialized_dag_update_interval"): "10",
        ("core", "min_serialized_dag_fetch_interval"): "5",
        ("database", "sql_alchemy_conn"): db_uri,
        ("database", "load_default_connections"): "False",
        ("api", "secret_key"): secrets.token_hex(16),
        ("api", "base_url"): f"http://127.0.0.1:{port}/",
        ("api", "port"): str(port),
        ("api_auth", "jwt_secret"): jwt,
        ("core", "simple_auth_manager_all_admins"): "True",
        ("scheduler", "scheduler_heartbeat_sec"): "2",
        ("scheduler", "job_heartbeat_sec"): "2",
        ("scheduler", "task_instance_heartbeat_timeout"): "45",
        ("scheduler", "task_instance_heartbeat_timeout_detection_interval"): "5",
        ("scheduler", "parsing_cleanup_interval"): "30",
        ("scheduler", "task_queued_timeout_check_interval"): "30",
        ("scheduler", "orphaned_tasks_check_interval"): "30",
        ("scheduler", "max_tis_per_query"): "64",
        ("dag_processor", "refresh_interval"): "10",
        ("dag_processor", "min_file_process_interval"): "15",
        ("dag_processor", "print_stats_interval"): "600",
        ("dag_processor", "stale_dag_threshold"): "120",
        ("dag_processor", "dag_file_processor_timeout"): "120",
        ("core", "dagbag_import_timeout"): "120",
        ("logging", "logging_level"): "INFO",
        ("workers", "min_heartbeat_interval"): "5",
    }
    settings.update(cfg.config)
    return {env_key(s, k): v for (s, k), v in settings.items()}
