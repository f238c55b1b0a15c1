# Sourced by the results scripts: run_jobs <counter file> <workers> runs the commands in the
# caller's `jobs` array (each "function args..."), each once, on that many parallel workers that
# take the next one from the counter file (flock'd), logging each start and failure.
run_jobs() {
  local counter=$1 w
  echo 0 > "$counter"
  worker() {
    while true; do
      local n
      n=$(flock "$counter" sh -c 'n=$(cat "$0"); echo $((n + 1)) > "$0"; echo $n' "$counter")
      [ "$n" -lt "${#jobs[@]}" ] || return 0
      echo "$(date -u +%FT%TZ) worker $1: ${jobs[$n]}"
      ${jobs[$n]} || echo "$(date -u +%FT%TZ) worker $1: ${jobs[$n]} failed (see its log)"
    done
  }
  for w in $(seq 1 "$2"); do worker "$w" & done
  wait
}
