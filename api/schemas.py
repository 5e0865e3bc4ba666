"""The HTTP API's response bodies (its request bodies are api/requests.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from api.requests import PRESETS_STATED
from moe_core.records import EpochFigures, StepPoint
from moe_core.statistics import CONFIDENCE, confidence_label
from moe_core.verdict_records import PairedTest, ServedSeedsVerdict, ServedVerdict, VerdictLine
from store.models import Status
from store.system_points import SystemReading


class GpuMemory(BaseModel):
    """Bytes, estimated from the configs alone (erring high by ~10%)."""

    parameters: int = Field(description="float32 weights")
    gradients_and_optimizer: int = Field(description="float32 gradients and AdamW's moments")
    autocast_weights: int = Field(description="bf16 copies of the weights under autocast")
    activations: int = Field(description="one step's saved activations and the logits")
    total: int = Field(description="the peak, with 10% for the allocator")


class ExperimentPlan(BaseModel):
    """`POST /experiments?dry_run=true`: what the run would be; nothing is stored or queued."""

    config: dict[str, Any] = Field(description="the resolved ExperimentConfig")
    base: dict[str, Any] = Field(description="the resolved BaseConfig")
    dense: bool
    params: int = Field(description="total parameters (embeddings tied, counted once)")
    active_params: int = Field(description="parameters one token passes through")
    steps_per_epoch: int | None = Field(
        description="optimizer steps in an epoch at base.max_train_tokens (null without a cap: "
        "the corpus decides; fewer if the corpus holds fewer tokens)"
    )
    tokens_per_epoch: int | None = Field(description="target tokens trained on in an epoch")
    num_epochs: int
    gpu_memory: GpuMemory = Field(
        description="the run's estimated peak GPU memory at its batch and sequence length, "
        "in bf16 unless base.precision is fp32 (moe_core.sizing), per GPU: on several "
        "(base.gpus) each holds its share of the experts and of each batch; a worker refuses "
        "a run whose estimate exceeds its GPU's memory"
    )


class StudyPlan(BaseModel):
    """`POST /studies?dry_run=true`: the runs a study would queue, once per seed."""

    runs: list[ExperimentPlan] = Field(description="the dense run first, then each preset")
    seeds: list[int] = Field(description="base.seed of each repetition of `runs`")


class ErrorDetail(BaseModel):
    """Every error's body: a message, or (422) FastAPI's list of located errors."""

    detail: str | list[dict[str, Any]] = Field(
        description="what went wrong; for a 422, one entry per bad field with its `loc`"
    )


class Progress(BaseModel):
    """Where a running run is, as its worker last wrote it (every few seconds)."""

    phase: Literal["preparing_data", "training", "evaluating"]
    epoch: int = Field(description="the epoch in progress, from 1")
    step: int = Field(description="training steps done in this epoch")
    steps_per_epoch: int | None = Field(description="training steps in an epoch")
    tokens_per_sec: float | None = Field(description="training tokens per second, this attempt")
    eta_seconds: float | None = Field(
        description="seconds until the last epoch ends, at this attempt's pace"
    )
    updated_at: datetime


class GpuReading(BaseModel):
    """A worker's GPU as NVML last read it, with the worker's heartbeat."""

    name: str | None = Field(description="the GPU's model, e.g. NVIDIA H200")
    utilization: float | None = Field(description="percent of the last sample window busy")
    memory_used: int | None = Field(description="bytes of GPU memory in use (all processes)")
    memory_total: int | None = Field(description="bytes of GPU memory")
    power_watts: float | None = Field(description="power draw; null where the GPU reports none")
    read_at: datetime


class ExperimentRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    owner: str = Field(description="who submitted it: only they or an admin change it")
    priority: int = Field(description="an admin's word in the queue's order: higher first")
    tags: list[str]
    note: str | None = Field(description="the researcher's note (PATCH /experiments/{id})")
    preset: str | None
    base_preset: str | None
    dense: bool
    baseline_id: int | None
    study_id: int | None
    sweep_id: int | None = Field(
        description="the sweep it is a run of (a trial's, or a dense baseline's)"
    )
    trial_number: int | None = Field(
        description="the sweep trial it runs (null: a sweep's dense run)"
    )
    status: Status
    cancel_requested: bool
    config: dict[str, Any]
    base: dict[str, Any]
    current_epoch: int
    num_epochs: int
    progress: Progress | None = Field(
        description="while running: step, steps per epoch, tokens/s and ETA (the heartbeat's)"
    )
    stopped_early: bool
    tokens_per_sec: float | None = Field(
        description="training tokens/s: this attempt's so far while running, else the mean "
        "over the epochs"
    )
    best_val_loss: float | None = Field(
        description="the engine's best validation loss: CE + aux for MoE runs, CE for dense"
    )
    best_val_ce_loss: float | None = Field(
        description="validation cross-entropy at the best epoch: what runs compare on"
    )
    params: int | None = Field(description="total parameters")
    active_params: int | None = Field(
        description="parameters one token passes through (params for a dense run)"
    )
    test_loss: float | None = Field(description="the kept weights' loss on the test split")
    test_ce_loss: float | None = Field(
        description="the kept weights' cross-entropy on the test split"
    )
    device: str | None
    precision: str | None = Field(
        description="bf16 or fp32: what it trains in (base.precision resolved on its device "
        "when it first starts; a study's members share their first member's); null before"
    )
    worker_name: str | None = Field(description="the worker node that runs (or ran) it")
    attempts: int = Field(description="times a worker started or resumed it")
    restarts: int = Field(description="times it was taken over after its worker died")
    handbacks: int = Field(
        description="times a worker handed it back: told to stop, or out of GPU memory"
    )
    oom_handbacks: int = Field(
        description="of those, times the GPU it shared ran out of memory (not a crash)"
    )
    gpu: GpuReading | None = Field(
        description="while it runs on a GPU: its worker's latest reading of that GPU (shared "
        "by every run of the worker); null on a CPU, where NVML gives none, or once finished"
    )
    run_key: str = Field(description="unique to the run; its artifacts live under it")
    summary: dict[str, float | int | None] = Field(
        description="what a run table shows of its results (GET /experiments filters and "
        "sorts on each: `where=val_ce<5`, `sort=-tokens_per_sec`): val_ce, val_loss, test_ce, "
        "test_loss, params, active_params, tokens_per_sec, best_epoch, train_ce (the last "
        "epoch's), and of the MoE layers at the last evaluation min_usage and max_usage (the "
        "smallest and largest expert's share, %), entropy (mean routing entropy over its "
        "maximum: 1 is uniform) and dropped (the largest dropped share), and max_step_load "
        "(the last trained epoch's); null where the run has none (yet)"
    )
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @field_validator("progress")
    @classmethod
    def _only_while_running(cls, progress: Progress | None, info: ValidationInfo):
        # A run taken back to the queue, or finished by someone else (a cancel of a dead
        # worker's run), may keep its last attempt's row: not where it is now.
        return progress if info.data.get("status") == Status.running else None


class Artifact(BaseModel):
    name: str = Field(description="download it from the list's URL + /{name}")
    size: int = Field(description="bytes")
    modified_at: datetime
    partial: bool = Field(
        False,
        description="the run has not succeeded: the file is what it had written when it "
        "stopped (a failed run's checkpoint.pt is its last finished epoch's), not its final "
        "output; model.pt and result.json are served only once it has succeeded",
    )


class ArtifactList(BaseModel):
    items: list[Artifact]


class ExperimentList(BaseModel):
    items: list[ExperimentRead]
    total: int
    study_names: dict[int, str] = Field(
        default_factory=dict, description="the name of each study the page's runs belong to"
    )
    sweep_names: dict[int, str] = Field(
        default_factory=dict, description="the name of each sweep the page's runs belong to"
    )


class MetricsRead(BaseModel):
    experiment_id: int
    status: Status
    # The engine's own record of an epoch (moe_core.records), as the store keeps it.
    epochs: list[EpochFigures]


class StepsRead(BaseModel):
    experiment_id: int
    every: int | None = Field(
        description="a point every this many steps (so that a run keeps at most ~2,000); "
        "null before a worker starts the run"
    )
    # The engine's own step point (moe_core.records), as the store keeps it.
    points: list[StepPoint]


class SystemRead(BaseModel):
    experiment_id: int
    # The store's own reading (store.system_points), every MOE_SYSTEM_METRICS_INTERVAL
    # seconds, at most MOE_SYSTEM_POINTS_MAX of them (the oldest thinned past that).
    points: list[SystemReading]


class EpochLosses(BaseModel):
    loss: float | None
    ce_loss: float | None
    aux_loss: float | None
    epoch: int | None = Field(description="whose weights: the epoch kept")


class ResultRead(BaseModel):
    """What the engine's run_single_experiment returned: metrics is Trainer.get_metrics().
    Fields the run predates are null."""

    config: dict[str, Any]
    metrics: dict[str, Any]
    params: int
    active_params: int | None = Field(description="parameters one token passes through")
    test: EpochLosses | None = Field(description="the kept weights on the test split")
    evaluation: dict[str, Any] | None = Field(
        description="how validation and test were computed: capacity_factor (null: nothing "
        "dropped), train_subset_blocks (the train_eval subset)"
    )
    seed: int | None = Field(description="base.seed")
    device: str | None = Field(None, description="the torch device it trained on")
    precision: str | None = Field(None, description="bf16 or fp32: what it trained in")
    compile: str | None = Field(None, description="base.compile: off, default or graphs")
    parallel: dict[str, int] | None = Field(
        None,
        description="its ranks: gpus (processes) and expert_parallel (ranks the experts "
        "are split over); one process: gpus 1",
    )
    together: dict[str, int] | None = Field(None, description="trained with its seed siblings "
                                            "as one stack: replicas (seeds) and index (its "
                                            "row); null: as a run alone")  # fmt: skip


# A verdict is the engine's record (moe_core.verdict_records), served as declared there:
# the OpenAPI schema names its types (ServedVerdict, PairedTest, ...).
VerdictRead = ServedVerdict


class StudyMember(BaseModel):
    id: int
    name: str
    preset: str | None
    dense: bool
    seed: int = Field(description="base.seed of this run")
    baseline_id: int | None = Field(description="the dense run of the same seed")
    status: Status
    current_epoch: int
    num_epochs: int
    best_val_loss: float | None
    best_val_ce_loss: float | None
    error: str | None


class VerdictRow(BaseModel):
    """One line of a study's verdict table; `verdict` is null (with a `detail`) until
    both the member and the study's dense run have succeeded."""

    experiment_id: int
    name: str
    preset: str | None
    seed: int
    baseline_id: int | None = Field(description="the dense run of the same seed")
    status: Status
    passed: bool | None
    primary_passed: bool | None
    tertiary_passed: bool | None
    verdict: VerdictRead | None
    detail: str | None


class SeedVerdict(BaseModel):
    seed: int
    experiment_id: int
    baseline_id: int
    passed: bool
    primary_passed: bool
    tertiary_passed: bool
    val_loss_delta: float | None = Field(description="best val CE minus dense's, this seed")


class PresetVerdict(BaseModel):
    """A preset over all the study's seeds (moe_core.criteria.judge_seeds), each seed's run
    paired with the dense run of its seed; null fields (with a `detail`) until every one of
    them has succeeded."""

    preset: str
    seeds: list[int]
    experiment_ids: list[int]
    passed: bool | None = Field(description="the spec's rule applied to the means")
    primary_passed: bool | None
    tertiary_passed: bool | None
    significant: bool | None = Field(
        description=f"the deciding difference (`significance_of`) is significant at {confidence_label()}: "
        f"a two-sided paired t-test with n - 1 degrees of freedom gives p < {1 - CONFIDENCE:.2g}, "
        "its interval excludes 0; null with one seed (unknown, not guessed)"
    )
    significance_of: Literal["val_loss_delta", "gap_delta"] | None = Field(
        description="the difference `significant` tests: val_loss_delta, or gap_delta where "
        "primary passes on the gap alone"
    )
    significance_note: str | None
    val_loss_delta: PairedTest | None = Field(description="best val CE minus dense's, over seeds")
    gap_delta: PairedTest | None = Field(description="val-train gap minus dense's, over seeds")
    per_seed: list[SeedVerdict]
    verdict: ServedSeedsVerdict | None = Field(description="judge_seeds' verdict, whole")
    lines: list[VerdictLine] = Field(
        description="the verdict over the seeds in words, one line a criterion (empty until judged)"
    )
    detail: str | None


class StudyRead(BaseModel):
    id: int
    name: str
    owner: str = Field(description="who submitted it: only they or an admin delete it")
    base_preset: str | None
    base: dict[str, Any]
    experiments: list[str]
    seeds: int
    precision: str | None = Field(
        description="bf16 or fp32: what its runs train in (base.precision, auto resolved on "
        "the device of the first run to start); null until one starts"
    )
    status: Status
    dense_id: int = Field(description="the dense run of the first seed (base.seed)")
    dense_ids: list[int] = Field(description="the dense run of each seed, in seed order")
    members: list[StudyMember]
    verdicts: list[VerdictRow] = Field(description="one per MoE run, against its seed's dense")
    preset_verdicts: list[PresetVerdict] = Field(description="one per preset, over the seeds")
    created_at: datetime


class StudySummary(BaseModel):
    id: int
    name: str
    owner: str = Field(description="who submitted it: only they or an admin delete it")
    status: Status
    seeds: int
    precision: str | None = Field(
        description="bf16 or fp32: what its runs train in (base.precision, auto resolved on "
        "the device of the first run to start); null until one starts"
    )
    dense_id: int
    dense_ids: list[int]
    member_ids: list[int]
    created_at: datetime


class StudyList(BaseModel):
    items: list[StudySummary]
    total: int


class Presets(BaseModel):
    experiments: dict[str, dict[str, Any]] = Field(
        description="every experiment preset, as full configs on the base asked for (spec "
        "unless ?base= names another): " + PRESETS_STATED
    )
    dense: dict[str, Any] = Field(description="the dense baseline's config on that base")
    base: dict[str, dict[str, Any]] = Field(description="the base presets, as full configs")
    dense_unused: list[str] = Field(
        description="the fields (`config.F`, `base.F`) a dense run's configs hold but nothing "
        "of it uses (it has no router and no experts): never a dense run's difference from "
        "its defaults or from another run"
    )


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


class GpuHolder(BaseModel):
    experiment_id: int
    gpus: int = Field(description="the run's base.gpus: its ranks, one GPU each")


class WorkerRead(BaseModel):
    name: str = Field(description="the Celery node name, e.g. gpu0@node-7")
    host: str
    pid: int
    device: str | None = Field(description="the torch device its training process uses")
    state: Literal["idle", "busy", "stopping"] = Field(
        description="busy while it trains any run; stopping once told to (it takes no more)"
    )
    slots: int = Field(description="runs it trains at once on its device (MOE_RUNS_PER_GPU)")
    slots_in_use: int = Field(description="runs it trains now")
    experiment_ids: list[int] = Field(description="the runs it trains now")
    experiment_id: int | None = Field(
        description="the run it trains, if any (with several slots: the first of them)"
    )
    gpus: int = Field(
        description="its GPUs (MOE_GPUS_PER_WORKER, or those it sees; a CPU worker: process "
        "slots): a run on k GPUs holds k of them"
    )
    gpus_in_use: int = Field(description="GPUs its runs hold now")
    gpu_holders: list[GpuHolder] = Field(description="which runs hold how many of its GPUs")
    started_at: datetime
    heartbeat_at: datetime
    idle_since: datetime | None = Field(
        description="since when it has had a free slot (one slot: held no run); null while "
        "every slot trains"
    )
    gpu: GpuReading | None = Field(
        description="its GPU's latest reading (NVML, with the heartbeat); null on a CPU worker"
    )


class WorkerList(BaseModel):
    items: list[WorkerRead]
    total: int


class TrialRead(BaseModel):
    number: int
    params: dict[str, Any] = Field(description="the trial's values, in the space's field order")
    state: Literal["running", "complete", "pruned", "failed", "tertiary_failed", "cancelled"]
    objective: dict[str, Any] | None = Field(
        description="over the seeds: name, mean, se, ci_low, ci_high, p_value, significant"
    )
    passed: bool | None = Field(description="the spec's verdict over the seeds (null: none)")
    pruned_at_epoch: int | None
    run_ids: list[int]
    finished_at: datetime | None


class SweepRead(BaseModel):
    id: int
    name: str
    owner: str = Field(description="who submitted it: only they or an admin cancel it")
    status: Literal["running", "finished", "cancelled"]
    parallel: int
    config: dict[str, Any] = Field(description="the sweep as the engine runs it (SweepConfig)")
    fields: list[str] = Field(description="the space's fields, in the order submitted")
    dense_run_ids: list[int]
    budget: int = Field(description="trials the sweep runs at most (proposed so far: trials)")
    trials: list[TrialRead] = Field(description="in the order proposed")
    ranking: list[int] = Field(description="trial numbers that can be best, best first")
    best_trial: int | None
    no_best: str | None = Field(
        description="why no trial can be best (each state that rules trials out); null when one can"
    )
    importance: dict[str, float] | None = Field(description="fANOVA share of each field")
    prune_rule: str | None = Field(
        description="what the median pruner compares (None: the sweep does not prune)"
    )
    created_at: datetime
    finished_at: datetime | None


class SweepPlan(BaseModel):
    trials: int = Field(description="the budget: trials the sweep runs at most")
    runs: int = Field(description="trials x seeds + one dense run per seed")
    max_runs: int
    grid_points: int | None


class SweepList(BaseModel):
    items: list[SweepRead]
    total: int
