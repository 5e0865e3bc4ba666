"""A verdict's records, declared once: what moe_core.criteria's `judge` (one run against its
dense run) and `judge_seeds` (a configuration over seeds) return, the lines people read them
in (moe_core.verdict_words), the paired t-test of moe_core.statistics, and a sweep trial's
objective. Torch-free. The store hands these out (store.verdicts), the API serves them as
declared here (descriptions included) and the MLflow sink mirrors them;
tests/moe_core/test_verdict_records.py holds every one of those to these keys, as
tests/moe_core/test_records.py does for the epoch's records (moe_core.records).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field
from typing_extensions import TypedDict  # pydantic reads it on Python < 3.12 too

from .statistics import CONFIDENCE, confidence_label

GAP_REDUCTION_TARGET = 0.25  # the spec's primary: validation gap reduced by at least 25%
MIN_USAGE_TARGET = 5.0  # the spec's tertiary: every expert gets at least 5% of assignments

# ------------------------------------------------------------------ statistics over seeds


class MeanSE(TypedDict):
    """Mean and standard error of the finite values (statistics.mean_se)."""

    mean: float | None
    se: Annotated[
        float | None, Field(description="standard error of the mean; null with one value")
    ]
    n: Annotated[int, Field(description="the finite values counted")]


class PairedTest(MeanSE):
    """A difference against dense, paired by seed, and its two-sided paired t-test
    (statistics.paired_t_test): all null but mean, n and confidence with one seed."""

    df: Annotated[int | None, Field(description="degrees of freedom of the t-test: n - 1")]
    t: Annotated[
        float | None,
        Field(description="mean / se; null with one seed, and where se is 0 (every seed alike)"),
    ]
    t_critical: Annotated[
        float | None,
        Field(
            description="Student's t with df degrees of freedom beyond which the test rejects "
            f"at {confidence_label()} (12.706 for 1, 4.303 for 2)"
        ),
    ]
    p_value: Annotated[float | None, Field(description="two-sided p-value of the paired t-test")]
    ci_low: Annotated[
        float | None,
        Field(
            description=f"the {confidence_label()} confidence interval's low end: mean - "
            "t_critical x se"
        ),
    ]
    ci_high: Annotated[float | None, Field(description="its high end: mean + t_critical x se")]
    confidence: Annotated[float, Field(description=f"the confidence level: {CONFIDENCE}")]
    significant: Annotated[
        bool | None,
        Field(description=f"p < {1 - CONFIDENCE:.2g}: the interval excludes 0; null with one seed"),
    ]


# ------------------------------------------------------------------ primary: model quality

GapOutcome = Literal["reduced", "closed", "inverted", "widened"]
LossWorse = Literal["beyond_noise", "within_noise", "noise_unknown"]


def gap_outcome(reduction: float | None) -> GapOutcome | None:
    """What became of the dense run's gap (> 0), from the spec's reduction, (dense gap -
    gap) / dense gap: above 1 the run's gap is below 0 (validation CE under training CE),
    which is an inversion, not a reduction of more than 100%."""
    if reduction is None:
        return None
    if reduction > 1:
        return "inverted"
    if reduction == 1:
        return "closed"
    return "widened" if reduction < 0 else "reduced"


def loss_worse(delta: float | Mapping[str, Any] | None) -> LossWorse | None:
    """Whether the validation CE is worse than dense's (a one-seed difference, or a
    paired_t_test over seeds), and whether beyond the seeds' noise: its interval above 0."""
    test = delta if isinstance(delta, Mapping) else {"mean": delta, "significant": None}
    if test["mean"] is None or test["mean"] <= 0:
        return None
    if test.get("significant") is None:
        return "noise_unknown"
    return "beyond_noise" if test["significant"] else "within_noise"


class PrimaryBase(TypedDict):
    passed: Annotated[
        bool,
        Field(
            description="the spec's rule: a lower validation CE than dense, or the gap reduced "
            f"by >= {100 * GAP_REDUCTION_TARGET:.0f}%"
        ),
    ]
    val_loss: Annotated[float | None, Field(description="validation CE at the best epoch")]
    dense_val_loss: Annotated[float | None, Field(description="the dense run's")]
    beats_dense_loss: bool
    val_gap: Annotated[
        float | None,
        Field(description="validation CE - eval-mode training CE, at the best epoch"),
    ]
    dense_val_gap: Annotated[float | None, Field(description="the dense run's")]
    gap_judged: Annotated[bool, Field(description="false: see gap_note")]
    gap_note: Annotated[str | None, Field(description="why the gap was not judged")]
    gap_reduction: Annotated[
        float | None,
        Field(
            description="(dense gap - gap) / dense gap, the spec's: above 1 where the gap "
            "inverted (see gap_outcome); null when not judged"
        ),
    ]
    gap_outcome: Annotated[
        GapOutcome | None,
        Field(
            description="what became of the dense run's gap: reduced (0 < gap <= dense's), "
            "closed (0), inverted (below 0: validation CE under training CE) or widened; "
            "null when not judged"
        ),
    ]
    gap_reduced_enough: Annotated[
        bool, Field(description=f"gap_reduction >= {GAP_REDUCTION_TARGET}")
    ]
    loss_worse: Annotated[
        LossWorse | None,
        Field(
            description="the validation CE is above dense's: beyond_noise (over seeds, the "
            "paired interval above 0), within_noise, or noise_unknown (one seed); null when "
            "it is not worse"
        ),
    ]


class Primary(PrimaryBase):
    """One seed's primary criterion."""

    val_loss_delta: Annotated[float | None, Field(description="val_loss - dense_val_loss")]


class SeedsPrimary(PrimaryBase):
    """The primary criterion over seeds: the spec's rule on the means, and the paired t-test
    of the difference that decides it."""

    val_loss_delta: Annotated[
        PairedTest, Field(description="best val CE minus dense's, paired by seed")
    ]
    loss_significant: bool | None
    gap_delta: Annotated[PairedTest, Field(description="val-train gap minus dense's, by seed")]
    gap_significant: bool | None
    significance_of: Annotated[
        Literal["val_loss_delta", "gap_delta"],
        Field(
            description="the difference `significant` tests: gap_delta where primary passes "
            "on the gap alone, else val_loss_delta"
        ),
    ]
    significant: Annotated[bool | None, Field(description="that difference's test; null: one seed")]


# ------------------------------------------------------------------ secondary: performance


class Timing(TypedDict):
    """Seconds summed over the run's epochs, and each phase's share of their sum."""

    forward_time: float
    backward_time: float
    optimizer_time: float
    forward_fraction: float
    backward_fraction: float
    optimizer_fraction: float


class Secondary(TypedDict):
    """Reported beside the dense run, not judged (over seeds: the means, the first seed's
    sizes and timing)."""

    tokens_per_sec: Annotated[
        float | None,
        Field(description="training tokens/s; the first epoch excluded when there are several"),
    ]
    dense_tokens_per_sec: float | None
    throughput_ratio: Annotated[
        float | None, Field(description="tokens_per_sec / dense's (over seeds: their mean)")
    ]
    throughput_note: Annotated[str | None, Field(description="which epochs were counted")]
    params: int | None
    active_params: Annotated[int | None, Field(description="parameters one token passes")]
    dense_params: int | None
    timing: Timing
    dense_timing: Timing | None


# ------------------------------------------------------------------ tertiary: expert usage


class TertiaryLayer(TypedDict):
    """One MoE layer of the final model over the validation set, in eval mode."""

    layer: int
    all_experts_used: bool
    min_usage: Annotated[float, Field(description="percent of the assignments")]
    max_usage: Annotated[float, Field(description="percent of the assignments")]
    entropy: Annotated[float | None, Field(description="nats")]
    max_entropy: Annotated[float, Field(description="ln(experts)")]
    normalized_entropy: float | None
    dropped: Annotated[
        float | None,
        Field(description="share of the validation assignments over the training capacity"),
    ]
    train_dropped: Annotated[
        float | None, Field(description="share dropped in the last training epoch")
    ]
    train_max_step_load: Annotated[
        float | None, Field(description="percent: the last epoch's busiest expert in one step")
    ]
    passed: Annotated[bool, Field(description=f"every expert >= {MIN_USAGE_TARGET:g}%")]


class TertiaryBase(TypedDict):
    passed: Annotated[
        bool,
        Field(
            description=f"every expert of every MoE layer gets >= {MIN_USAGE_TARGET:g}% of the "
            "final model's validation assignments"
        ),
    ]
    min_usage_target: float
    min_usage: Annotated[float | None, Field(description="percent: the least used expert")]
    max_dropped: float | None
    layers: list[TertiaryLayer]
    reason: Annotated[str | None, Field(description="why there are no layers to judge")]


class Tertiary(TertiaryBase):
    epoch: Annotated[int | None, Field(description="the evaluation judged: the last")]


class SeedsTertiary(TertiaryBase):
    """Over seeds: passed when every seed passes; `layers` are the worst seed's."""

    seeds_passed: int


# ------------------------------------------------------------------ verdicts


class VerdictBase(TypedDict):
    seeds: Annotated[int, Field(description="runs judged, each against its seed's dense run")]
    passed: Annotated[bool, Field(description="primary and tertiary both pass")]
    significance_note: Annotated[str | None, Field(description="why `significant` is null")]


class Verdict(VerdictBase):
    """One run against one dense run (criteria.judge)."""

    primary: Primary
    secondary: Secondary
    tertiary: Tertiary
    significant: Annotated[
        None, Field(description="always null: one seed says nothing of noise (see a study's)")
    ]


class SeedsVerdict(VerdictBase):
    """A configuration over seeds, each run paired with its seed's dense run
    (criteria.judge_seeds): the spec's rule on the means."""

    primary: SeedsPrimary
    secondary: Secondary
    tertiary: SeedsTertiary
    significant: Annotated[
        bool | None, Field(description="primary.significant: the deciding difference's test")
    ]
    per_seed: Annotated[list[Verdict], Field(description="each seed's own verdict")]


class VerdictLine(TypedDict):
    """One line of a verdict as people read it (verdict_words.verdict_lines): the CLI and
    the dashboard print these as they are, so both say the same."""

    criterion: Literal["primary", "secondary", "tertiary", "passed"]
    passed: Annotated[bool | None, Field(description="null for secondary: reported, not judged")]
    summary: Annotated[str, Field(description="the numbers the criterion was judged on")]
    rule: Annotated[str, Field(description="what the criterion asks")]
    significance: Annotated[
        str | None,
        Field(
            description="the paired t-test of the deciding difference (primary only), or why "
            "there is none"
        ),
    ]


class ServedVerdict(Verdict):
    """A run's verdict as the store hands it out and the API serves it (store.verdicts)."""

    baseline_id: Annotated[int, Field(description="the dense run judged against")]
    lines: Annotated[
        list[VerdictLine], Field(description="the verdict in words, one line a criterion")
    ]


class ServedSeedsVerdict(SeedsVerdict):
    """A configuration's verdict over seeds as the API serves it (a study's preset)."""

    lines: Annotated[
        list[VerdictLine], Field(description="the verdict in words, one line a criterion")
    ]


class Objective(PairedTest):
    """A sweep trial's objective over its seeds (search.objective_of): the paired test of
    its values; with one seed the mean alone."""

    name: Literal["delta_val_ce", "delta_val_ce_at_equal_time", "val_ce"]
    values: Annotated[list[float | None], Field(description="one per seed")]
