#!/usr/bin/env bash
# Builds the worker's two C programs into dist/bin/, each when its source is newer: the git
# hook program (src/git/hook.c, as vcs-worker-hook) and the pack relay (src/git/pack-relay.c).
# Static where libc allows (a static binary starts in ~1 ms, which git pays on every fetch),
# else dynamic.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p dist/bin
for pair in hook:vcs-worker-hook pack-relay:pack-relay; do
  src=src/git/${pair%%:*}.c
  out=dist/bin/${pair#*:}
  if [ -x "$out" ] && [ "$out" -nt "$src" ]; then continue; fi
  flags=(-O2 -Wall -Wextra -Werror -o "$out.tmp" "$src")
  cc -static "${flags[@]}" 2>/dev/null || cc "${flags[@]}"
  mv "$out.tmp" "$out"
done
