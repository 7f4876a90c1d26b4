#!/usr/bin/env bash
# The GPU proof in two halves: prepared here, run on a machine with CUDA torch and no network.
#
#   bash bench/gpu.sh prepare    # here: the wheels (../shared/tools/device-wheels.sh) and a
#                                # default bake, into .gpu/ (ignored by git; about 36 MiB)
#   bash bench/gpu.sh run        # there, with .gpu carried: installs the wheels byte-compiled
#                                # into a throwaway venv, then runs bench/gpu.py (table in $OUT)
#
# Extra arguments go to bench/gpu.py, e.g. `bash bench/gpu.sh run --scale 0.8`.
set -euo pipefail
cd "$(dirname "$0")/.."
stage="${1:?usage: bash bench/gpu.sh prepare|run [bench/gpu.py options]}"
shift
case "$stage" in
  prepare)
    rm -rf .gpu && mkdir -p .gpu
    bash ../shared/tools/device-wheels.sh .gpu/wheels
    source .ci/env.sh
    cookiecutter --no-input --output-dir .gpu "$PWD"
    du -sh .gpu
    ;;
  run)
    site=/tmp/gpu-site venv=/tmp/gpu-venv
    python3 -m pip install -q --no-index --no-deps --target "$site" .gpu/wheels/*.whl
    python3 -m compileall -q -j 0 "$site" || true  # a few test files of dependencies do not compile
    # A venv whose .pth adds this interpreter's packages (CUDA torch) and the wheels, so that
    # every subprocess (DVC's stages, reproduce's worktree) imports them; PYTHONPATH would not last.
    python3 -m venv --without-pip "$venv"
    torch_site="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    venv_site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "import site; site.addsitedir('$torch_site'); site.addsitedir('$site')" > "$venv_site/zz_gpu.pth"
    export PATH="$venv/bin:$PATH" DVC_NO_ANALYTICS=1
    git config --global user.name >/dev/null || git config --global user.name "GPU proof"
    git config --global user.email >/dev/null || git config --global user.email "gpu@example.org"
    python bench/gpu.py --project .gpu/organ-segmentation "$@"
    ;;
  *)
    echo "usage: bash bench/gpu.sh prepare|run" >&2
    exit 2
    ;;
esac
