# Sourced by .ci/demo and .ci/test: one virtualenv (.venv) with everything a baked project
# needs, installed once and shared by every project the demo and the tests bake.
set -euo pipefail
TEMPLATE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$TEMPLATE_DIR/.venv}"
PYTHON="${PYTHON:-python3}"
export DVC_NO_ANALYTICS=1
# The suites run their modules side by side on every core, each torch process with several
# threads. OpenMP's idle threads would spin on cores the other processes need; passive waiting
# gives the same results with far less CPU (two default trains at once: 130 s each -> 47 s).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

if [ ! -x "$VENV/bin/python" ] || [ ! -f "$VENV/.complete" ]; then
  echo "Creating $VENV (about 3 minutes)"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  # Installed first, so that the projects' plain `torch` requirement keeps this build.
  # Set TORCH_SPEC (e.g. TORCH_SPEC=torch) to choose another build.
  "$VENV/bin/pip" install --quiet "${TORCH_SPEC:-torch==2.13.0}"
  "$VENV/bin/pip" install --quiet "cookiecutter>=2.6" "pytest>=8" "ruff>=0.5" "cruft>=2.15" \
    tensorboard wandb  # the optional extra sinks (tracking.sinks), which the tests exercise
  # The baked project's own dependencies, taken from a throwaway bake of its pyproject.toml.
  scratch="$(mktemp -d)"
  "$VENV/bin/cookiecutter" --no-input --output-dir "$scratch" "$TEMPLATE_DIR" data_remote=s3
  "$VENV/bin/pip" install --quiet "$scratch/organ-segmentation[dev,team]"
  "$VENV/bin/pip" uninstall --quiet --yes organ-segmentation
  rm -rf "$scratch"
  touch "$VENV/.complete"
fi
export PATH="$VENV/bin:$PATH"
# pytest-xdist runs the suites' modules side by side; checked here so that an older .venv gets it.
if ! "$VENV/bin/python" -c "import xdist" 2>/dev/null; then
  "$VENV/bin/pip" install --quiet "pytest-xdist>=3.5"
fi
# Headless Chromium opens the rendered plots pages (tests/test_plots_offline.py); CI runs as root.
if ! command -v chromium >/dev/null; then
  apt-get install -y --quiet chromium || { apt-get update --quiet && apt-get install -y --quiet chromium; }
fi
# The team-setup tests (tests/test_team.py) start PostgreSQL, an S3-protocol server (moto) and
# the project's MLflow server on 127.0.0.1. Checked one by one, so that an older .venv gets them.
# aiobotocore is named so that pip keeps the botocore that dvc-s3 pins when it adds boto3.
if ! "$VENV/bin/python" -c "import moto.server, boto3, psycopg" 2>/dev/null; then
  "$VENV/bin/pip" install --quiet "moto[server]" boto3 "psycopg[binary]" aiobotocore
fi
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
  apt-get install -y --quiet postgresql || { apt-get update --quiet && apt-get install -y --quiet postgresql; }
fi
export TEMPLATE_TESTS_REQUIRE_SERVERS=1  # here a missing server fails those tests instead of skipping
