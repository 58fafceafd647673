#!/usr/bin/env bash
# Run pytest at another wall-clock time, to find tests whose outcome depends on WHEN they run (CI runs at any hour).
#   scripts/at_time.sh --start 2027-01-01T00:00:05 -- -m browser     # the run starts just after a new year's midnight
#   scripts/at_time.sh --each 86399.5 -- -m "not bpf and not browser" # every test crosses midnight 0.5 s in
# Python's time.time/time_ns are shifted in this process and every Python process it starts (scripts/clockshift);
# Chromium gets Playwright's clock at the same time. Known artifact: a page reading performance marks (Playwright's
# clock replaces `performance`) fails; test_ui_browser's boot-order check does.
set -euo pipefail
cd "$(dirname "$0")/.."
start="" each=""
while [ $# -gt 0 ]; do
  case "$1" in
    --start) start=$2; shift 2 ;;
    --each) each=$2; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
[ -n "$start$each" ] || { echo "usage: $0 --start ISO-UTC | --each SECONDS-AFTER-MIDNIGHT -- pytest args" >&2; exit 2; }
offset=$(mktemp); echo 0 > "$offset"
trap 'rm -f "$offset" "$offset.tmp"' EXIT
PODFLAME_CLOCK_OFFSET_FILE=$offset CLOCKSHIFT_START=$start CLOCKSHIFT_EACH=$each \
  PYTHONPATH="$PWD/scripts/clockshift${PYTHONPATH:+:$PYTHONPATH}" \
  .venv/bin/pytest -p clockplugin -p no:cacheprovider "$@"
