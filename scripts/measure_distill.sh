#!/usr/bin/env bash
# The measurements of docs/distillation.md, one run after another (run from the repository root;
# each heavy step under nice, as the machine is shared). Writes runs/<name>/metrics.json and logs.
set -euo pipefail
TS="${TUNESMITH:-tunesmith}"
run() { local name=$1; shift; /usr/bin/time -v nice -n 10 $TS "$@" > "runs/$name.log" 2>&1; }

mkdir -p runs
# 1. The teacher: LoRA SFT of the embedded model on instruction_rasbt (one epoch), merged.
if [ ! -f runs/teacher_merged/model.safetensors ]; then
  run teacher_lora train examples/instruction_rasbt_lora.yaml train.eval_every=0 eval.limit=40 \
    output.dir=runs/teacher_lora
  $TS merge --model default --adapter runs/teacher_lora --output runs/teacher_merged
fi
# 2. Teacher and the cut student before training, scored the same way as the trained students.
run eval_teacher eval examples/sft_rasbt_student.yaml model.keep_layers= \
  output.dir=runs/eval_teacher --base
run eval_cut eval examples/sft_rasbt_student.yaml output.dir=runs/eval_cut --base
# 3. The cut student after plain SFT, and after distillation (same data, steps, lr).
run sft_student train examples/sft_rasbt_student.yaml
run distill_student train examples/distill_rasbt_student.yaml
# 4. Size and decode speed.
nice -n 10 python bench/bench_student.py runs/teacher_merged runs/distill_student/student \
  > runs/bench_student.md
# 5. Peak memory both ways over 5 steps: reading the top-k cache (teacher never loaded) and
#    with the teacher on the fly.
run distill_cached_5 train examples/distill_rasbt_student.yaml train.max_steps=5 \
  distill.cache_dir=runs/distill_student/teacher_cache eval.limit=0 eval.general_data= \
  output.dir=runs/distill_cached_5
run distill_live_5 train examples/distill_rasbt_student.yaml train.max_steps=5 \
  distill.cache_top_k=0 eval.limit=0 eval.general_data= output.dir=runs/distill_live_5
