#!/usr/bin/env bash
# Time the data stages on full Fashion-MNIST (local Debian mirror) in a temp copy of the repo.
#   download / validate / prepare: median of 3 runs each (download starts from an empty data/raw)
#   no-op `dvc repro prepare`:     median of 5 runs
# Goals: the three stages under 20 s together; a no-op repro under 2 s.
# Usage: bench/data_stages.sh   (from anywhere; uses the repo's .venv)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_BIN="${VENV_BIN:-$REPO/.venv/bin}"
export PATH="$VENV_BIN:$PATH"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/bench-data-stages.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# A fresh-clone-like copy: tracked + untracked-not-ignored files, without pipeline outputs.
cd "$REPO"
git ls-files -z --cached --others --exclude-standard \
  | grep -zvE '^(data/raw|data/prepared|models|mlruns|\.dvc/cache|\.dvc/tmp)/' \
  | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done \
  | xargs -0 cp --parents -t "$WORK"
cd "$WORK"
git init -q && git add -A && git -c user.email=bench@example.invalid -c user.name=bench commit -qm init
python - <<'EOF'
import yaml
p = yaml.safe_load(open("params.yaml"))
assert p["data"]["dataset"] == "fashion_mnist" and p["data"]["limit"] == 0, p["data"]
EOF

# time_cmd NAME CMD...: append the wall seconds of one run to $WORK/NAME.times; fail loudly.
time_cmd() {
  local name=$1; shift
  if ! /usr/bin/time -f %e -o "$WORK/.t" "$@" >"$WORK/.log" 2>&1; then
    echo "FAILED: $*" >&2; cat "$WORK/.log" >&2; exit 1
  fi
  cat "$WORK/.t" >>"$WORK/$name.times"
}

for _ in 1 2 3; do
  rm -rf data/raw
  time_cmd download python -m pipeline.download
done
for _ in 1 2 3; do time_cmd validate python -m pipeline.validate; done
for _ in 1 2 3; do time_cmd prepare python -m pipeline.prepare; done

dvc repro prepare >"$WORK/.log" 2>&1 || { cat "$WORK/.log" >&2; exit 1; }  # record dvc.lock
for _ in 1 2 3 4 5; do time_cmd noop_repro dvc repro prepare; done
grep -qE "up to date|didn't change" "$WORK/.log" || { echo "repro was not a no-op:" >&2; cat "$WORK/.log" >&2; exit 1; }

python - "$WORK" <<'EOF'
import statistics, sys
from pathlib import Path
work = Path(sys.argv[1])
rows = {n: [float(t) for t in (work / f"{n}.times").read_text().split()]
        for n in ("download", "validate", "prepare", "noop_repro")}
med = {n: statistics.median(ts) for n, ts in rows.items()}
print(f"{'step':<22}{'median s':>10}  runs")
for n, ts in rows.items():
    print(f"{n:<22}{med[n]:>10.2f}  {' '.join(f'{t:.2f}' for t in ts)}")
data = med["download"] + med["validate"] + med["prepare"]
print(f"{'data stages total':<22}{data:>10.2f}  goal < 20 s: {'ok' if data < 20 else 'MISSED'}")
print(f"{'no-op repro':<22}{med['noop_repro']:>10.2f}  goal < 2 s: "
      f"{'ok' if med['noop_repro'] < 2 else 'MISSED'}")
EOF
