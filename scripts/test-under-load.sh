#!/usr/bin/env bash
# The suite on a loaded machine: `npm test` while stress-ng keeps every core busy.
# A test that passes only on an idle machine waits for a time instead of an event; this finds it.
# Usage: npm run test:load [-- extra tap arguments, e.g. a file]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh stress-ng python3-dulwich python3-pygit2 postgresql git-lfs
workers="${LOAD_WORKERS:-$(nproc)}"
# bounded: the load ends on its own after an hour even if this script is killed with -9
stress-ng --cpu "$workers" --timeout 3600 --quiet &
load=$!
trap 'kill "$load" 2>/dev/null; wait "$load" 2>/dev/null || true' EXIT
echo "test-under-load: stress-ng --cpu $workers (pid $load) running beside the suite" >&2
npx --no-install eslint .
npx --no-install tap "${@:-dist/test/**/*.test.js}"
