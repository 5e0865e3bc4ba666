"""The tables of the store of record, a module per family; the schema is made by the Alembic
migrations only. Importing this package registers every table on `Base.metadata` (what
migrations/env.py and its autogenerate compare against), and every name is importable from
here: `from store.models import Experiment`."""

from store.models.base import NAMING_CONVENTION, Base, JSONType, UTCDateTime, utcnow
from store.models.experiments import FINISHED, Experiment, SinkFailure, Status, new_run_key
from store.models.metrics import EpochMetrics, ExpertStats, StatsKind, StepMetrics, SystemPoint
from store.models.studies import Study
from store.models.sweeps import TRIAL_DONE, Sweep, SweepStatus, SweepTrial, TrialState
from store.models.users import BOOTSTRAP_ADMIN, ApiToken, AuditEvent, Role, User
from store.models.workers import Worker

__all__ = [
    "BOOTSTRAP_ADMIN",
    "FINISHED",
    "NAMING_CONVENTION",
    "TRIAL_DONE",
    "ApiToken",
    "AuditEvent",
    "Base",
    "EpochMetrics",
    "Experiment",
    "ExpertStats",
    "JSONType",
    "SinkFailure",
    "StatsKind",
    "Role",
    "Status",
    "StepMetrics",
    "Study",
    "Sweep",
    "SweepStatus",
    "SweepTrial",
    "SystemPoint",
    "TrialState",
    "UTCDateTime",
    "User",
    "Worker",
    "new_run_key",
    "utcnow",
]
