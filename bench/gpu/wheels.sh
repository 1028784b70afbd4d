#!/usr/bin/env bash
# Run here (with internet), in the project root: fills .whl/ (git-ignored) with what a GPU machine
# that has torch but no internet and no Ray lacks to run bench/gpu/run.sh: ../shared/gpu/wheels.sh's
# DeepSpeed and pydantic, plus pyarrow (aiprod.storage, ~45 MB). Then, on the device:
#   run(command="bash bench/gpu/run.sh", carry=[".whl"], timeout_s=...)
# Ray (~70 MB, more with ray[train]'s dependencies) does not fit one call's 64 MiB, so run.sh skips
# bench/train_step.py's (c) there and c/b on a GPU stays unmeasured.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-.whl}
export PATH="$PWD/.venv/bin:$PATH"   # the venv's versions of deepspeed/pydantic/pyarrow are the ones pinned
bash "${SHARED:-../shared}/gpu/wheels.sh" "$out"
pa=$(python -m pip show pyarrow | sed -n "s/^Version: //p")
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$out" "pyarrow==$pa"
du -sh "$out"
