"""`moe-lab`: the command line of the moe-lab API, a thin layer over moe_lab.client.Client.

    moe-lab submit top2-run --preset top2 --set config.dropout=0.2 --set base.num_epochs=2 --wait
    moe-lab ls --status running
    moe-lab compare 1 2 3

MOE_API_URL (default http://127.0.0.1:8000) and MOE_API_TOKEN say where and as whom; without
them, what `moe-lab login` kept. An error of the API is one line on stderr and exit status 1;
read commands take --json.
"""

from __future__ import annotations

# The commands register themselves on the app as their modules are imported, and --help
# lists them in that order: the runs' first, who you are and the admin's after.
# isort: off
from moe_lab import (  # noqa: F401
    experiment_commands,
    label_commands,
    study_commands,
    sweep_commands,
    account_commands,
    admin_commands,
)

# isort: on
from moe_lab.app import app

__all__ = ["app"]
