"""Part 3: an epoch through the real Trainer against a bare loop over the same batches.

Both sides drive the same model and optimizer objects (interleaved, so both see the same
evolving weights) over the same pre-built batches, and both evaluate the same validation
batch, because `Trainer.train` always evaluates the last epoch. What is left in the ratio
is the engine's bookkeeping: phase timing, loss accumulation, expert statistics, the
epoch record and the `on_epoch_end` callback (which serialises the record to JSON, as
the service's callback does before writing it to the database).
"""

from __future__ import annotations

import json
from typing import Any

import torch

from moe_core.config import base_config, get_experiment_configs
from moe_core.runner import build_model, build_optimizer
from moe_core.trainer import GRAD_CLIP, Trainer, TrainerHooks

from .context import Context
from .harness import ratio_samples, summarize, times_summary

FULL: dict[str, Any] = dict(preset="tiny", steps=24)
SMOKE: dict[str, Any] = dict(preset="micro", steps=4)


def run(ctx: Context) -> dict[str, Any]:
    sizes = SMOKE if ctx.smoke else FULL
    base = base_config(sizes["preset"])
    cfg = get_experiment_configs(base)["baseline"]
    torch.manual_seed(base.seed)
    model = build_model(cfg, base).to(ctx.device)
    optimizer = build_optimizer(model, cfg, base, fused=ctx.device.type == "cuda")
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, base.vocab_size, (sizes["steps"] + 1, cfg.batch_size, base.seq_len + 1),
                         generator=g)  # fmt: skip
    batches = [(b[:, :-1].contiguous(), b[:, 1:].contiguous()) for b in data[:-1]]
    val = [(data[-1][:, :-1].contiguous(), data[-1][:, 1:].contiguous())]
    records: list[str] = []
    trainer = Trainer(
        model, batches, val, optimizer, ctx.device, model_name="bench",
        hooks=TrainerHooks(on_epoch_end=lambda record: records.append(json.dumps(record))),
        verbose=False,
        amp_dtype=ctx.amp_dtype, compile=ctx.compile,
    )  # fmt: skip
    # The Trainer's own (compiled or not) forward-and-losses on both sides: what is timed is
    # everything around it (statistics, clocks, callbacks, checkpoints-free epoch records).
    step = trainer.loss_step

    def trainer_epoch():
        trainer.train(trainer.epoch + 1)

    def bare_epoch():
        model.train()
        for x, y in batches:
            x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
            loss, _, _, _ = step(x, y, 0.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for x, y in val:
                x, y = x.to(ctx.device), y.to(ctx.device)
                step(x, y, 0.0)[1].item()

    samples = ctx.run({"trainer": trainer_epoch, "bare": bare_epoch},
                      warmup=1, repeats=ctx.repeats)  # fmt: skip
    ratio = summarize(ratio_samples(samples, "trainer", "bare"))
    times = times_summary(samples)
    return {
        "rows": [
            {
                "name": f"{sizes['preset']}: Trainer epoch vs bare loop",
                "params": dict(
                    preset=sizes["preset"],
                    steps=sizes["steps"],
                    batch_size=cfg.batch_size,
                    seq_len=base.seq_len,
                ),  # fmt: skip
                "ratio": ratio,
                "ratio_of": "trainer / bare (time)",
                "overhead_fraction": ratio["median"] - 1,
                "times_s": times,
                "epochs_recorded": len(records),
            }
        ]
    }
