"""What a Trainer prints when it is verbose: a reporter beside the other callbacks, reading
the same epoch records and progress reports that the service stores."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from .records import EpochRecord, ProgressReport


class ConsoleReporter:
    """Prints each finished epoch (losses, gap, throughput, timing split, temperature, per
    layer routing in training and on the validation set) and, every `log_interval` steps,
    where the epoch stands. `running_loss` is read only then: it costs a device sync."""

    def __init__(
        self, name: str, running_loss: Callable[[], float], log_interval: int = 50
    ) -> None:
        self.name, self.running_loss, self.log_interval = name, running_loss, log_interval
        self._since: tuple[float, int] | None = None  # (time, tokens) at the segment start

    def say(self, message: str) -> None:
        print(f"[{self.name}] {message}", flush=True)

    def on_progress(self, report: ProgressReport) -> None:
        now = time.perf_counter()
        if report["phase"] != "training" or self._since is None:
            self._since = (now, report["tokens"])  # a new segment: a fresh rate
            return
        step = report["step"]
        if not self.log_interval or step % self.log_interval:
            return
        started, tokens = self._since
        rate = (report["tokens"] - tokens) / max(now - started, 1e-9)
        print(f"  [{self.name}] epoch {report['epoch']} step {step}/{report['steps_per_epoch']}"
              f" loss {self.running_loss():.4f} | {rate:,.0f} tok/s", flush=True)  # fmt: skip

    def on_epoch_end(self, r: EpochRecord, num_epochs: int) -> None:
        self._since = None
        t = r["train"]
        line = (
            f"[{self.name}] epoch {r['epoch']}/{num_epochs} "
            f"train {t['loss']:.4f} (ce {t['ce_loss']:.4f} aux {t['aux_loss']:.4f})"
        )
        # A record's losses may be None (the type allows a store's null); the Trainer's are not.
        v = r["val"]
        if v is not None and v["ce_loss"] is not None:
            ce = v["ce_loss"]
            line += f" | val {v['loss']:.4f} (ce {ce:.4f}, ppl {math.exp(min(ce, 50)):.1f})"
            train_ce = r["train_eval"]["ce_loss"] if r["train_eval"] is not None else None
            if train_ce is not None:
                line += f" gap {ce - train_ce:+.4f}"
        total = r["forward_time"] + r["backward_time"] + r["optimizer_time"]
        line += (
            f" | {r['tokens_per_sec']:,.0f} tok/s | fwd {r['forward_time']:.1f}s"
            f" bwd {r['backward_time']:.1f}s opt {r['optimizer_time']:.1f}s of {total:.1f}s"
        )
        if r["gating_temperature"] is not None:
            line += f" | T {r['gating_temperature']:.3f}"
        print(line, flush=True)
        for s in r["expert_stats"]:
            print(
                f"    layer {s['layer']} train: entropy {s['entropy']:.3f}/{s['max_entropy']:.3f} nats"
                f" | usage min {s['min_usage']:.1f}% max {s['max_usage']:.1f}%"
                f" (one step: {s['max_step_load']:.1f}%) | dropped {_percent(s['dropped'])}"
                f" | imbalance {s['imbalance']:.2f} (worst {s['max_imbalance']:.2f})"
                f" pad {_percent(s['pad_ratio'])} z {s['z_loss']:.2f}",
                flush=True,
            )
        for e in r["eval_expert_stats"]:
            print(
                f"    layer {e['layer']} val:   entropy {e['entropy']:.3f}/{e['max_entropy']:.3f} nats"
                f" | usage min {e['min_usage']:.1f}% max {e['max_usage']:.1f}%"
                f" | over training capacity {_percent(e['dropped'])}",
                flush=True,
            )
        if r["stopped_early"]:
            self.say(f"early stopping: no improvement for {r['patience_counter']} evaluations")


def _percent(share: float | None) -> str:
    """A share as a percentage; n/a where a record has none (a dense layer's, an old row's)."""
    return "n/a" if share is None else f"{100 * share:.1f}%"
