"""The end-to-end harness behind `memseries demo`, the benchmarks and tests/e2e: a real Airflow stack.

Modules, one job each: config (what to run, Airflow settings), procs (process groups: start in own session,
stop all at once), sampling (PSS/USS sampler), metadata (the metadata DB: create, counts, writes), aging
(sitecustomize that ages forked children, and its logs), safety (signals/atexit: nothing survives the
orchestrator), core (the Stack that ties them together). Nothing here imports airflow.
"""

from memseries.stack.aging import AGE_ENV, AGE_LOG_ENV, SITECUSTOMIZE
from memseries.stack.config import (
    EXAMPLE_DAGS,
    PG_URL,
    REPO,
    Component,
    StackConfig,
    StackError,
    default_config,
    env_key,
    free_port,
)
from memseries.stack.core import Stack
from memseries.stack.metadata import MetadataDB, postgres_unreachable
from memseries.stack.procs import WORKER_TITLE, ProcessGroups, ProcInfo, default_classify, tail
from memseries.stack.sampling import Sample, Sampler, mib

__all__ = [
    "AGE_ENV", "AGE_LOG_ENV", "EXAMPLE_DAGS", "PG_URL", "REPO", "SITECUSTOMIZE", "WORKER_TITLE", "Component",
    "MetadataDB", "ProcInfo", "ProcessGroups", "Sample", "Sampler", "Stack", "StackConfig", "StackError",
    "default_classify", "default_config", "env_key", "free_port", "mib", "postgres_unreachable", "tail",
]
