#!/usr/bin/env bash
# The converged CPU campaign: every experiment's cpu preset, two single-thread runs side by side on a
# 2-core machine, each table trained from a git worktree pinned at one commit (so a table comes from
# one commit while this checkout keeps changing), written into THIS checkout's book/results/cpu/.
#
#   scripts/cpu_campaign.sh [EXPERIMENT ...]     # default: all seven; data_efficiency (with seed 0 mostly done) last
#   CAMPAIGN_COMMIT=abc123 scripts/cpu_campaign.sh  # the commit for tables that have no rows yet
#                                                   # (default HEAD; a table with rows keeps their commit)
#   CAMPAIGN_PLAN_ONLY=1 scripts/cpu_campaign.sh    # print the compute plans and stop
#   scripts/cpu_campaign.sh --stop                  # stop cleanly (before a session ends, or to free the cores)
#
# Resumable across sessions: rows already in a table are skipped and a run cut short resumes from its
# last.pt (run folders live under $CAMPAIGN_DIR, outside the repository). Each shard works through
# seed 0 of every experiment first, then seed 1, then seed 2, so every table has a whole seed early. Runs that wait for a
# tuning seed (optimizers: the other seeds run at the LR chosen on seed 0) are picked up by a second
# pass once both shards are done. Commit the tables as rows land:
#   git add book/results/cpu && git commit -m "..."
set -euo pipefail

if [ "${1:-}" = "--stop" ]; then
    # The loops first, so that no new run starts; then each runner, whose SIGTERM becomes a KeyboardInterrupt
    # (see run below): the trainer writes run.json with the call's status and wall time before it exits,
    # and the next start resumes from last.pt. A SIGKILL (or SIGSTOP while paused) would leave run.json
    # without that call's time, and the row's wall_time_s short.
    for pid in $(pgrep -f "bash.*cpu_campaign.sh" || true); do
        [ "$pid" = $$ ] || kill -TERM "$pid" 2>/dev/null || true
    done
    pkill -TERM -f "medseg_tutorial.cli.* experiment " || true
    while pgrep -f "medseg_tutorial.cli.* experiment " >/dev/null; do sleep 1; done
    echo "campaign stopped: scripts/cpu_campaign.sh resumes it"
    exit 0
fi

repo=$(git rev-parse --show-toplevel)
cd "$repo"
experiments=("$@")
[ ${#experiments[@]} -gt 0 ] || experiments=(optimizers activation losses source_transfer leakage volumes data_efficiency)
campaign_dir=${CAMPAIGN_DIR:-$(dirname "$repo")/campaign}
python=${PYTHON:-$repo/.venv/bin/python}
export NO_ALBUMENTATIONS_UPDATE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export MEDSEG_DATA_ROOT=${MEDSEG_DATA_ROOT:-$(dirname "$repo")/shared/datasets}
mkdir -p "$campaign_dir/logs" "$repo/book/results/cpu"

declare -A worktree
for name in "${experiments[@]}"; do  # each table's commit: its rows', else CAMPAIGN_COMMIT or HEAD
    table=book/results/cpu/$name.csv
    commit=${CAMPAIGN_COMMIT:-HEAD}
    if [ -f "$table" ]; then
        used=$("$python" -c "import csv,sys; r=list(csv.DictReader(open(sys.argv[1]))); print(r[0]['commit'] if r else '')" "$table")
        commit=${used:-$commit}
    fi
    commit=$(git rev-parse "$commit")
    dir=$campaign_dir/worktree-${commit:0:12}
    if [ ! -d "$dir" ]; then
        git worktree prune
        git worktree add --detach "$dir" "$commit" >/dev/null
    fi
    # the worktree's package, not the checkout's editable install (python -m puts the cwd first)
    (cd "$dir" && "$python" -c "import medseg_tutorial, sys; p = medseg_tutorial.__file__; sys.exit(0 if p.startswith('$dir') else f'imports {p}')")
    worktree[$name]=$dir
done

runner='import runpy, signal
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.default_int_handler)
runpy.run_module("medseg_tutorial.cli", run_name="__main__", alter_sys=True)'
run() {  # run EXPERIMENT SHARD [ARGS]: one shard of one experiment, in its table's worktree
    local name=$1 shard=$2
    shift 2
    # python -c rather than -m: a background job ignores SIGINT, so SIGTERM is made a KeyboardInterrupt
    # (what --stop sends); the cwd still comes first on sys.path, so the worktree's package is the one run
    (cd "${worktree[$name]}" && "$python" -c "$runner" experiment "$name" --preset cpu --threads 1 \
        --shard "$shard" --no-progress --results "$repo/book/results/cpu/$name.csv" \
        --run-root "$campaign_dir/runs/$name" "$@")
}

for name in "${experiments[@]}"; do  # the compute plan of each experiment, before anything starts
    echo "$name at $(basename "${worktree[$name]}"):"
    run "$name" 0/1 --dry-run | sed "/^\[/,\$d"
done

[ -z "${CAMPAIGN_PLAN_ONLY:-}" ] || exit 0

shard() {  # shard K/2: seed 0 of every experiment, then seed 1, then seed 2 (every table fills in early)
    local k=$1
    for seed in 0 1 2; do
        for name in "${experiments[@]}"; do
            run "$name" "$k/2" --where "train.seed=$seed" || echo "$name seed $seed shard $k/2: some runs failed"
        done
    done
}
echo "logs in $campaign_dir/logs"
for pass in 1 2; do  # pass 2: the runs that waited for a tuning seed (nothing else is left)
    shard 0 >>"$campaign_dir/logs/shard0.log" 2>&1 &
    shard 1 >>"$campaign_dir/logs/shard1.log" 2>&1 &
    wait
done
echo "campaign finished: git add book/results/cpu && git commit"
