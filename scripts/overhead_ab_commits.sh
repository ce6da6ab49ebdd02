#!/usr/bin/env bash
# Two versions of the runtime, A/B, on one artifact: `benchmarks.overhead` (chain / monolithic and
# its parts) run alternately for the working tree and for a commit, ROUNDS times each, so a host
# that drifts during the runs affects both alike.
#   scripts/overhead_ab_commits.sh ARTIFACT OLD_COMMIT OUT [ROUNDS] [ROWS]
# Writes OUT/ov_new_R.json (the working tree) and OUT/ov_old_R.json (OLD_COMMIT, from a temporary
# git worktree). Run it on a quiet machine; nothing else heavy meanwhile.
set -euo pipefail
art=$1 old=$2 out=$(realpath -m "$3") rounds=${4:-2} rows=${5:-200}
root=$(cd "$(dirname "$0")/.." && pwd)
data=${DATA_DIR:-$root/../shared/data}
wt=$(mktemp -d)
git -C "$root" worktree add --detach "$wt" "$old" >/dev/null
trap 'git -C "$root" worktree remove --force "$wt"' EXIT
for r in $(seq 1 "$rounds"); do
  for v in new old; do
    d=$root; [ "$v" = old ] && d=$wt
    (cd "$d" && python -m benchmarks.overhead --artifact "$art" --task sst2 --data-dir "$data" \
       --max-samples "$rows" --passes 3 --name "ov_${v}_$r" --out "$out") | grep -E "chain_overhead|python_loop|calibrated" | sed "s/^/$v $r /"
  done
done
