# Sourced by the results scripts. run_jobs <counter file> <workers> runs the commands in the
# caller's `jobs` array (each "function args..."), each once, on that many parallel workers that
# take the next one from the counter file (flock'd), logging each start and each failure with its
# exit status (130/143: stopped by a signal); it returns 1 if any job failed, after listing them.
# Helpers: finished <run dir>; resumable <run dir> (a checkpoint to resume from: a run killed
# before its first one starts again); logged <log> <command...> (appends a header line and the
# command's output to the log, which keeps every attempt); saved_as <run dir> key=value... (whether
# the run was begun with those settings, as its config.yaml holds them; where not it says which
# differ: a run of other settings is neither skipped as done nor resumed as this one).
finished() { grep -qs '"status": "finished"' "$1/summary.json"; }
saved_as() {
  [ -f "$1/config.yaml" ] || return 0
  python - "$@" <<'PY'
import sys
from omegaconf import OmegaConf
run, pairs = sys.argv[1], [p.split("=", 1) for p in sys.argv[2:]]
cfg = OmegaConf.load(f"{run}/config.yaml")
bad = [f"{k}={OmegaConf.select(cfg, k)} (asked {v})" for k, v in pairs if str(OmegaConf.select(cfg, k)) != v]
if bad:
    sys.exit(f"{run} was begun with other settings: {', '.join(bad)}: move it aside, or ask for its settings")
PY
}
resumable() { [ -f "$1/checkpoint.pt" ]; }
logged() {
  local log=$1; shift
  echo "== $(date -u +%FT%TZ) $*" >> "$log"
  "$@" >> "$log" 2>&1
}

run_jobs() {
  local counter=$1 w
  echo 0 > "$counter"
  : > "$counter.failed"
  worker() {
    while true; do
      local n code
      n=$(flock "$counter" sh -c 'n=$(cat "$0"); echo $((n + 1)) > "$0"; echo $n' "$counter")
      [ "$n" -lt "${#jobs[@]}" ] || return 0
      echo "$(date -u +%FT%TZ) worker $1: ${jobs[$n]}"
      ${jobs[$n]} && continue
      code=$?
      case $code in 130|143) what="stopped by a signal" ;; *) what="failed" ;; esac
      echo "$(date -u +%FT%TZ) worker $1: ${jobs[$n]} $what (exit $code; see its log)"
      flock "$counter" sh -c 'echo "$1 (exit $2)" >> "$0"' "$counter.failed" "${jobs[$n]}" "$code"
      # (a job stopped by a signal stops its worker, not only the job: to stop a queue, TERM each
      # python it runs, or the queue's process group, `kill -TERM -- -<pgid>`; each run saves first)
      case $code in 130|143) return 0 ;; esac
    done
  }
  for w in $(seq 1 "$2"); do worker "$w" & done
  wait
  if [ -s "$counter.failed" ]; then
    echo "$(date -u +%FT%TZ) $(wc -l < "$counter.failed") job(s) did not finish: $(paste -sd ';' "$counter.failed")"
    return 1
  fi
}
