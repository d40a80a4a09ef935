#!/usr/bin/env bash
# The converged CPU campaign: every experiment's cpu preset, two single-thread runs side by side on a
# 2-core machine, trained from a git worktree pinned at one commit (so a table comes from one commit
# while this checkout keeps changing), writing the tables into THIS checkout's book/results/cpu/.
#
#   scripts/cpu_campaign.sh [EXPERIMENT ...]            # default: the converged experiments, in order
#   CAMPAIGN_COMMIT=abc123 scripts/cpu_campaign.sh ...   # pin another commit (default: the one the
#                                                        # table's rows already come from, else HEAD)
#
# Resumable across sessions: rows already in a table are skipped and a run cut short resumes from its
# last.pt (the run folders live under $CAMPAIGN_DIR, outside the repository). Each shard works through
# the seeds in order (all seed-0 cells first), so a table committed half-way has whole seeds.
# Commit the tables as rows land: git add book/results/cpu && git commit -m "..."
set -euo pipefail

repo=$(git rev-parse --show-toplevel)
cd "$repo"
experiments=("$@")
[ ${#experiments[@]} -gt 0 ] || experiments=(data_efficiency)
campaign_dir=${CAMPAIGN_DIR:-$(dirname "$repo")/campaign}
python=${PYTHON:-$repo/.venv/bin/python}
export NO_ALBUMENTATIONS_UPDATE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export MEDSEG_DATA_ROOT=${MEDSEG_DATA_ROOT:-$(dirname "$repo")/shared/datasets}

# the commit: the one the first table's rows come from (a campaign continues where it stopped), else HEAD
first=book/results/cpu/${experiments[0]}.csv
if [ -z "${CAMPAIGN_COMMIT:-}" ] && [ -f "$first" ]; then
    CAMPAIGN_COMMIT=$("$python" -c "import csv,sys; r=list(csv.DictReader(open(sys.argv[1]))); print(r[0]['commit'] if r else '')" "$first")
fi
commit=$(git rev-parse "${CAMPAIGN_COMMIT:-HEAD}")
worktree=$campaign_dir/worktree-${commit:0:12}
if [ ! -d "$worktree" ]; then
    git worktree prune
    git worktree add --detach "$worktree" "$commit" >/dev/null
fi
mkdir -p "$campaign_dir/logs" "$repo/book/results/cpu"
cd "$worktree"
# the worktree's package, not the checkout's editable install (python -m puts the cwd first)
"$python" -c "import medseg_tutorial, sys; p = medseg_tutorial.__file__; sys.exit(0 if p.startswith('$worktree') else f'imports {p}')"

run() {  # run EXPERIMENT SHARD [--where ...]: one shard of one experiment at the pinned commit
    local name=$1 shard=$2
    shift 2
    "$python" -m medseg_tutorial.cli experiment "$name" --preset cpu --threads 1 --shard "$shard" --no-progress \
        --results "$repo/book/results/cpu/$name.csv" --run-root "$campaign_dir/runs/$name" "$@"
}

for name in "${experiments[@]}"; do
    run "$name" 0/1 --dry-run | sed -n "1,/^\[/p"  # the compute plan, before anything starts
done

shard() {  # shard K: every experiment, seed by seed
    local k=$1
    for name in "${experiments[@]}"; do
        for seed in 0 1 2; do
            run "$name" "$k/2" --where "train.seed=$seed" || echo "$name seed $seed shard $k/2: some runs failed"
        done
    done
}
echo "campaign at ${commit:0:12} in $worktree; logs in $campaign_dir/logs"
shard 0 >>"$campaign_dir/logs/shard0.log" 2>&1 &
shard 1 >>"$campaign_dir/logs/shard1.log" 2>&1 &
wait
echo "campaign finished: git add book/results/cpu && git commit"
