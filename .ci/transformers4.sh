#!/usr/bin/env bash
# transformers 4.57 compatibility: tests/test_pipeline.py and tests/test_modeling.py in a virtual environment that
# has transformers 4.57 (and the huggingface_hub, tokenizers and datasets versions it works with) on top of the
# system packages (torch, numpy, pillow, ...). The venv is kept for the next run; pip only checks it then.
#
#   .ci/transformers4.sh [more pytest arguments]        GLIED_TF4_VENV=<folder> picks another venv (default .venv-tf4)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
venv="${GLIED_TF4_VENV:-.venv-tf4}"
if [ ! -x "$venv/bin/python" ]; then
  python -m venv --system-site-packages "$venv"
fi
# transformers 4.57 wants huggingface_hub < 1.0 and tokenizers < 0.23; the system's datasets 5 wants
# huggingface_hub >= 1, so the venv gets a datasets 4 (the quick-start data writes a feature store with it);
# setuptools: the venv's own copy would be older than torch asks for.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  "transformers==4.57.*" "huggingface_hub<1.0" "tokenizers<0.23" "datasets<5" "setuptools>=77"
"$venv/bin/python" -c 'import transformers, huggingface_hub, tokenizers, datasets
print(f"transformers {transformers.__version__}, huggingface_hub {huggingface_hub.__version__}, "
      f"tokenizers {tokenizers.__version__}, datasets {datasets.__version__}")'
ready=$((SECONDS - start))
status=0
"$venv/bin/python" -m pytest -q tests/test_pipeline.py tests/test_modeling.py "$@" || status=$?
echo "transformers 4.57: venv ready in ${ready} s; venv and tests took $((SECONDS - start)) s (pytest exit ${status})"
exit "$status"
