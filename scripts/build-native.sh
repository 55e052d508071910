#!/usr/bin/env bash
# Builds the worker's two C programs into dist/bin/, each when its source is newer: the
# pack-objects hook (src/git/pack-objects-hook.c) and the pack relay (src/git/pack-relay.c).
# Static where libc allows (a static binary starts in ~1 ms, which git pays on every fetch),
# else dynamic.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p dist/bin
for name in pack-objects-hook pack-relay; do
  src=src/git/$name.c
  out=dist/bin/$name
  if [ -x "$out" ] && [ "$out" -nt "$src" ]; then continue; fi
  flags=(-O2 -Wall -Wextra -Werror -o "$out.tmp" "$src")
  cc -static "${flags[@]}" 2>/dev/null || cc "${flags[@]}"
  mv "$out.tmp" "$out"
done
