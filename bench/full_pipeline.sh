#!/usr/bin/env bash
# The default pipeline end to end on full Fashion-MNIST, in a fresh temp copy of the repo:
# wall time of each stage (run one at a time with `dvc repro -s`), the total, the test
# accuracy, and a no-op `dvc repro` (median of 5).
#   bash bench/full_pipeline.sh            # prints a table; the copy is removed afterwards
#   KEEP=1 bash bench/full_pipeline.sh     # keeps the copy (e.g. to serve its registered model)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$repo/.venv/bin:$PATH"
work=$(mktemp -d)
[[ -n "${KEEP:-}" ]] && echo "working copy: $work" || trap 'rm -rf "$work"' EXIT
cd "$repo"
git ls-files --cached --others --exclude-standard -z | xargs -0 cp --parents -t "$work"
cd "$work"
git init -q && git add -A && git -c user.email=bench@localhost -c user.name=bench commit -qm bench

stages=(download validate prepare tune train evaluate register)
declare -A secs
total_start=$(date +%s.%N)
for s in "${stages[@]}"; do
    t0=$(date +%s.%N)
    dvc repro -s "$s" >"$work/$s.log" 2>&1 || { echo "stage $s failed:"; tail -20 "$work/$s.log"; exit 1; }
    secs[$s]=$(echo "$(date +%s.%N) - $t0" | bc)
done
total=$(echo "$(date +%s.%N) - $total_start" | bc)
noop=()
for _ in 1 2 3 4 5; do
    t0=$(date +%s.%N); dvc repro >/dev/null 2>&1; noop+=("$(echo "$(date +%s.%N) - $t0" | bc)")
done
median_noop=$(printf '%s\n' "${noop[@]}" | sort -n | sed -n 3p)

printf '%-10s %8s\n' stage seconds
for s in "${stages[@]}"; do printf '%-10s %8.1f\n' "$s" "${secs[$s]}"; done
printf '%-10s %8.1f\n' total "$total"
printf '%-10s %8.2f  (median of 5: %s)\n' no-op "$median_noop" "${noop[*]}"
python - <<'PY'
import json
m = json.load(open("reports/evaluation/metrics.json"))
t = json.load(open("reports/tune/summary.json"))
tr = json.load(open("models/train_summary.json"))
d = json.load(open("reports/registry/decision.json"))
print(f"test accuracy {m['accuracy']:.4f}  macro F1 {m['macro_f1']:.4f}  ECE {m['ece']:.4f}")
print(f"tune: best val {t['best_val_accuracy']:.4f}, {t['trials_complete']} complete / "
      f"{t['trials_pruned']} pruned, {t['epochs_total']} epochs")
print(f"train: best val {tr['val_accuracy']:.4f} at epoch {tr['best_epoch']}/{tr['epochs_run']}")
print(f"register: {d['decision']} v{d['version']} ({d['reason']})")
PY
