"""Fault injection for the worker tests, in the worker's own processes: Python imports this
module at start-up in every process that has this folder on PYTHONPATH (the tests' workers
only; nothing of it ships). With MOE_TEST_OOM=<run name>:<step>:<times>, a Trainer training
the run of that name raises torch.cuda.OutOfMemoryError (as a GPU shared with other runs
would) when it is about to take that global step, on its first <times> attempts across every
process (counted by files in MOE_TEST_OOM_DIR). On the CPU nothing else raises it."""

import os

_spec = os.environ.get("MOE_TEST_OOM")

if _spec:
    from pathlib import Path

    import torch

    import moe_core.trainer as _trainer

    _name, _step, _times = _spec.split(":")
    _dir = Path(os.environ["MOE_TEST_OOM_DIR"])
    _init = _trainer.Trainer.__init__

    def _init_with_fault(self, *args, **kwargs):
        _init(self, *args, **kwargs)
        if self.model_name != _name:
            return
        step = self.loss_step.compiled  # what a training step calls (moe_core.step.LossStep)

        def failing_step(x, y, smoothing):
            raised = sorted(_dir.glob("oom-*"))
            if (
                self.model.training
                and self.current_step == int(_step)
                and len(raised) < int(_times)
            ):
                (_dir / f"oom-{len(raised)}").touch()
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected by the test)")
            return step(x, y, smoothing)

        self.loss_step.compiled = failing_step

    _trainer.Trainer.__init__ = _init_with_fault
