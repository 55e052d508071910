#!/usr/bin/env bash
# One idempotent set-up for `npm start`, `npm test` and the benchmarks on a fresh machine:
# Debian packages when their commands are missing, npm dependencies from package-lock.json,
# the TypeScript build and the pack-objects hook, and data/repos seeded from repos-fixture/ on first run.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v git >/dev/null || need_pkgs+=(git)
command -v hg >/dev/null || need_pkgs+=(mercurial)
command -v haproxy >/dev/null || need_pkgs+=(haproxy)
{ command -v cc >/dev/null && [ -e /usr/include/stdio.h ]; } || need_pkgs+=(gcc libc6-dev) # the pack-objects hook and the pack relay (scripts/build-native.sh)
for p in "$@"; do # extra packages a caller needs, e.g. the benchmarks' nginx and fcgiwrap
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if ((${#need_pkgs[@]})); then
  echo "setup: installing Debian packages: ${need_pkgs[*]}" >&2
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  if [[ " ${need_pkgs[*]} " == *" postgresql "* ]] && [ ! -e /etc/postgresql-common/createcluster.conf ]; then
    # tests start their own server in a temp dir: no system cluster, no server left running
    $sudo mkdir -p /etc/postgresql-common
    echo 'create_main_cluster = false' | $sudo tee /etc/postgresql-common/createcluster.conf >/dev/null
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm dependencies (the first time, better-sqlite3 may be compiled from source: a few minutes)" >&2
  npm ci --no-audit --no-fund --loglevel=error
fi

# the commit message rule (.githooks/commit-msg), in a git checkout whose hooks are not set otherwise
if git rev-parse --is-inside-work-tree >/dev/null 2>&1 && [ "$(git rev-parse --show-toplevel)" = "$PWD" ] && [ -z "$(git config --get core.hooksPath || true)" ]; then
  git config core.hooksPath .githooks
fi

npx --no-install tsc -p tsconfig.json
chmod +x dist/src/cli/main.js # the package's bin: runnable through a symlink on PATH
bash scripts/build-native.sh

if [ ! -d data/repos ]; then
  mkdir -p -m 0700 data # the account store's password hashes are the owner's alone
  cp -a repos-fixture data/repos.tmp && mv data/repos.tmp data/repos
  for r in demo.git team/project.git empty.git demo-hg; do
    node dist/src/cli/main.js repo visibility "$r" public --data data --init >/dev/null
  done
  echo "setup: seeded data/repos from repos-fixture/ (public demo repos)" >&2
fi
