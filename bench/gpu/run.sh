#!/usr/bin/env bash
# On a GPU machine without Ray or internet (the lent device), in the project root, after
# bench/gpu/wheels.sh filled .whl/: the GPU half of bench/train_step.py (b/a on the cluster preset's
# first denoiser phase in bf16, that denoiser's MFU eager and torch.compile, the gtx1070 preset's first
# denoiser phase under an 8 GiB cap in fp32 with TF32 off) and bench/models.py's bf16 rows.
# Logs go to $OUT (the device tool's folder) or out/gpu; each bench's last line is its JSON.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
# TORCH_CUDA_ARCH_LIST: the image's "9.0a" breaks DeepSpeed's op builder when it JIT-builds an op.
export PYTHONPATH=/tmp/site:$PWD TORCH_CUDA_ARCH_LIST=9.0
out=${OUT:-out/gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" 2>&1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee "$out/torch.txt"
status=0
timeout "${TRAIN_STEP_S:-420}" python3 bench/train_step.py --preset cluster --phase 3 --batch "${BATCH:-4}" \
  --rounds "${ROUNDS:-8}" --window 3 --warmup 3 > "$out/train_step.log" 2>&1 || status=$?
tail -12 "$out/train_step.log"
timeout "${MODELS_S:-120}" python3 bench/models.py --repeats 3 > "$out/models.log" 2>&1 || status=$?
tail -8 "$out/models.log"
# The gtx1070 preset's first denoiser phase per fine-tuning mode under an 8 GiB cap (issue 25). PEFT and
# transformers are not in .whl/ (the carry's 64 MiB holds DeepSpeed, pydantic and pyarrow): add them there
# when they fit, else this is skipped.
if python3 -c "import peft" 2>/dev/null; then
  timeout "${FINETUNE_S:-180}" python3 bench/finetune_memory.py --preset gtx1070 --steps 3 --cap-gib 8 \
    > "$out/finetune_memory.log" 2>&1 || status=$?
  tail -6 "$out/finetune_memory.log"
else
  echo "peft not installed here: bench/finetune_memory.py's GPU peaks not measured"
fi
exit $status
