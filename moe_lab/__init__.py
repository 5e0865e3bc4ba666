"""The Python client and the `moe-lab` command line of the moe-lab API.

`moe_lab.client.Client` is the library; `moe_lab.cli` (the `moe-lab` command) is a thin
layer over it. Neither imports the server's packages: `requirements/client.txt` is all
they need.
"""

from moe_lab.client import ApiError, Client

__all__ = ["ApiError", "Client"]
