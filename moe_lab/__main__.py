"""`python -m moe_lab`: the same as the `moe-lab` command."""

from moe_lab.cli import app

app(prog_name="moe-lab")
