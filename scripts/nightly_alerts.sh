#!/usr/bin/env bash
# The nightly's regression check and auto-bisection: nightly.yml runs this after `asv run` and
# `asv publish`; tests/test_bisection.py runs the same file over a stand-in history.
#
# 1. `moebench alerts` examines the commits this run measured (NEW_COMMITS) -> alerts.{md,json};
# 2. `moebench bisect` resumes unfinished bisections (STATE) and starts one for every new
#    regression whose range holds more than one commit, measuring at most MAX_COMMITS commits
#    -> bisect.{md,json}. Each finished bisection becomes a comment on its regression's issue.
#
# Environment (defaults in brackets): MACHINE (required), NEW_COMMITS [empty: no new commits],
# RESULTS [results], CONFIG [asv.conf.json], HTML [html; used when it exists], STATE
# [bisect/state.json], MAX_COMMITS [8], MOEBENCH [.venv/bin/moebench], OUT_DIR [.].
# Writes to $GITHUB_OUTPUT when set: regressions, bisected (the state changed), culprits (bisect
# issues to file) as true/false. Exit 0 unless a step failed on bad input.
set -euo pipefail
: "${MACHINE:?MACHINE (the asv machine name) is required}"
RESULTS=${RESULTS:-results}
CONFIG=${CONFIG:-asv.conf.json}
HTML=${HTML:-html}
STATE=${STATE:-bisect/state.json}
MAX_COMMITS=${MAX_COMMITS:-8}
MOEBENCH=${MOEBENCH:-.venv/bin/moebench}
OUT_DIR=${OUT_DIR:-.}
OUTPUT=${GITHUB_OUTPUT:-/dev/null}
mkdir -p "$OUT_DIR" "$(dirname "$STATE")"

regressions=false
if [ -n "${NEW_COMMITS:-}" ] && [ -s "$NEW_COMMITS" ]; then
  html=()
  if [ -d "$HTML" ]; then html=(--html-dir "$HTML"); fi
  rc=0
  "$MOEBENCH" alerts "$RESULTS" --machine "$MACHINE" "${html[@]}" --config "$CONFIG" \
    --commits "$NEW_COMMITS" --markdown "$OUT_DIR/alerts.md" --json "$OUT_DIR/alerts.json" || rc=$?
  case $rc in
    0) ;;
    1) regressions=true ;;
    *) exit "$rc" ;;
  esac
fi

bisect=(bisect "$RESULTS" --state "$STATE" --config "$CONFIG" --machine "$MACHINE"
        --max-commits "$MAX_COMMITS" --json "$OUT_DIR/bisect.json" --markdown "$OUT_DIR/bisect.md")
if [ "$regressions" = true ]; then bisect+=(--alerts "$OUT_DIR/alerts.json"); fi
before=$(cat "$STATE" 2>/dev/null || true)
"$MOEBENCH" "${bisect[@]}"
after=$(cat "$STATE" 2>/dev/null || true)

culprits=$(python3 -c 'import json, sys; print("true" if json.load(open(sys.argv[1]))["issues"] else "false")' \
  "$OUT_DIR/bisect.json")
{
  echo "regressions=$regressions"
  echo "bisected=$([ "$before" != "$after" ] && echo true || echo false)"
  echo "culprits=$culprits"
} >> "$OUTPUT"
