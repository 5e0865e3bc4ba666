"""Side-by-side benchmarks of the MoE engine and its service: `python -m benchmarks all`.

Every figure is a ratio of variants interleaved in one run (see `harness`); the sections
are `moe_layer`, `model_step`, `trainer_overhead`, `data`, `service`, `recovery` and `gpu`
(`suite.SECTIONS`).
"""
