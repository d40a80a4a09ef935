#!/usr/bin/env bash
# The converged CPU campaign: every experiment's cpu preset, two single-thread runs side by side on a
# 2-core machine, each table trained from a git worktree pinned at one commit (so a table comes from
# one commit while this checkout keeps changing), written into THIS checkout's book/results/cpu/.
#
#   scripts/cpu_campaign.sh [EXPERIMENT ...]     # default: all eight
#   CAMPAIGN_COMMIT=abc123 scripts/cpu_campaign.sh  # the commit for tables that have no rows yet
#                                                   # (default HEAD; a table with rows keeps their commit)
#   CAMPAIGN_PLAN_ONLY=1 scripts/cpu_campaign.sh    # print the compute plans and the queue, and stop
#   scripts/cpu_campaign.sh --stop                  # stop cleanly (before a session ends, or to free the cores)
#
# Resumable across sessions: rows already in a table are skipped and a run cut short resumes from its
# last.pt (run folders live under $CAMPAIGN_DIR, outside the repository). Two workers take the pending
# runs from one queue, seed 0 of every experiment first, then seed 1, then seed 2, so every table has a
# whole seed early. Runs that wait for a tuning seed (optimizers: the other seeds run at the LR chosen
# on seed 0) are picked up by a second pass once both workers are done. Commit the tables as rows land:
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
[ ${#experiments[@]} -gt 0 ] || experiments=(optimizers activation losses source_transfer leakage volumes data_efficiency reference)
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

claims=$campaign_dir/claims
mkdir -p "$claims"
rm -f "$claims"/*.done  # a marker only saves a worker a look at a finished run within this start
for name in "${experiments[@]}"; do  # the compute plan of each experiment, before anything starts
    echo "$name at $(basename "${worktree[$name]}"):"
    run "$name" 0/1 --dry-run >"$claims/listing-$name"  # kept for the first queue
    sed "/^\[/,\$d" "$claims/listing-$name"
done

# A work queue rather than fixed halves: with fixed shards one worker can end hours before the other
# (runs differ in length), and half the machine idles. Each pending run is one queue item, claimed
# with a file lock by whichever worker is free, so two workers never train the same run; a worker
# that dies releases its claim, and the next start resumes that run from its last.pt.
queue() {  # "SEED NAME K/N" per pending run, seed 0 of every experiment first (every table fills in early)
    local name listing
    for name in "${experiments[@]}"; do
        if [ -f "$claims/listing-$name" ]; then  # the listing the compute plan was printed from
            listing=$(<"$claims/listing-$name")
            rm "$claims/listing-$name"
        else
            listing=$(run "$name" 0/1 --dry-run)
        fi
        if grep -q "^tune:" "${worktree[$name]}/configs/experiments/$name.yaml"; then
            # a tuned sweep lists its later seeds only once the tuning seed is in: one worker runs it in order
            grep -q "pending\|will resume" <<<"$listing" && echo "0 $name 0/1"
            continue
        fi
        # "[i/n] RUN_ID {overrides}: pending": run i alone is shard i-1 of n
        "$python" -c '
import json, re, sys
for line in sys.stdin:
    m = re.match(r"\[(\d+)/(\d+)\] (\w+) (\{.*\}): (pending|started, will resume)$", line.strip())
    if m:
        seed = json.loads(m[4]).get("train.seed", 0)
        print(seed, sys.argv[1], f"{int(m[1]) - 1}/{m[2]}", m[3])' "$name" <<<"$listing"
    done | sort -s -n -k1,1
}
worker() {  # take the first unclaimed item of the queue file $1, run it, repeat until none is left
    local seed name shard id fd
    while read -r seed name shard id; do
        local key=$claims/$name-${id:-all}
        [ -e "$key.done" ] && continue
        exec {fd}>"$key.lock"
        if flock -n "$fd"; then
            if run "$name" "$shard" </dev/null; then
                [ -z "$id" ] || touch "$key.done"
            else
                echo "$name $shard: some runs failed"
            fi
        fi
        exec {fd}>&-
    done <"$1"
}
if [ -n "${CAMPAIGN_PLAN_ONLY:-}" ]; then
    echo "pending runs, in the order the workers take them (seed, experiment, shard, run id):"
    queue
    exit 0
fi
echo "logs in $campaign_dir/logs"
for pass in 1 2; do  # pass 2: the runs that waited for a tuning seed (nothing else is left)
    queue >"$claims/queue"
    echo "pass $pass: $(wc -l <"$claims/queue") queue items"
    worker "$claims/queue" >>"$campaign_dir/logs/shard0.log" 2>&1 &
    worker "$claims/queue" >>"$campaign_dir/logs/shard1.log" 2>&1 &
    wait
done
echo "campaign finished: git add book/results/cpu && git commit"
