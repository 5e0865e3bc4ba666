#!/usr/bin/env bash
# The wheels `python -m benchmarks gpu` needs on a bare GPU machine of this workplace
# (Python 3.12 with torch, tokenizers, numpy, pandas, pyarrow, httpx, rich, typer already
# there): the engine's `datasets`, and the service's packages for the `slots` and
# `study_service` parts (an embedded store: no Postgres, no Redis). About 13 MB; the
# versions are requirements/*.txt's. Run here, in the repository's root:
#
#   bash benchmarks/gpu_wheels.sh            # -> .whl/ (ignored by git)
#
# then carry `.whl` (and a copy of WikiText-2, e.g. .wikitext/) and begin the device's
# command with:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
pin() { grep -hiE "^$1(\[[^]]*\])?==" requirements/*.txt | head -1 | sed 's/ *#.*//; s/\[[^]]*\]//'; }
wheels=(
  "$(pin pydantic)" pydantic-core annotated-types typing-inspection
  "$(pin pydantic-settings)" python-dotenv
  "$(pin fastapi)" starlette annotated-doc opentelemetry-api "$(pin fastapi-offline)"
  "$(pin sse-starlette)"
  "$(pin celery)" kombu billiard vine amqp tzlocal tzdata
  click-didyoumean click-repl click-plugins prompt-toolkit wcwidth
  "$(pin redis)" "$(pin SQLAlchemy)" greenlet "$(pin alembic)" Mako
  "$(pin datasets)" dill multiprocess
)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "${wheels[@]}"
du -sh .whl
