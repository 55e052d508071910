#!/usr/bin/env bash
# Rebuilds repos-fixture/ from nothing, byte-for-byte the same each time for a given git/hg
# version: fixed authors, fixed dates, no hooks samples. The result is committed; the server
# and the tests only ever copy it (docs/design.md: never write into repos-fixture/).
set -euo pipefail
cd "$(dirname "$0")/.."
out=repos-fixture
rm -rf "$out"; mkdir -p "$out/team"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

export HOME="$work/home" GIT_CONFIG_NOSYSTEM=1 LC_ALL=C TZ=UTC HGPLAIN=1 HGRCPATH=/dev/null
mkdir -p "$HOME"
export GIT_AUTHOR_NAME="Ada Fixture" GIT_AUTHOR_EMAIL="ada@fixture.invalid"
export GIT_COMMITTER_NAME="Ada Fixture" GIT_COMMITTER_EMAIL="ada@fixture.invalid"
n=0
commit() { # commit FILE TEXT MESSAGE — one commit with a date one hour after the previous
  n=$((n + 1)); local d="2024-01-01T$(printf %02d $((n % 24))):00:00Z"
  export GIT_AUTHOR_DATE="$d" GIT_COMMITTER_DATE="$d"
  printf '%s\n' "$2" >> "$1"; git add -- "$1"; git commit -q -m "$3"
}

git init -q -b main "$work/demo"; cd "$work/demo"
commit README.md "# demo" "Initial commit"
commit src.txt "one" "Add src"
commit src.txt "two" "Extend src"
git tag v1.0
git tag -a v1.1 -m "Release 1.1"   # annotated tag
git checkout -q -b feature
commit feature.txt "feature work" "Start feature"
commit feature.txt "more feature work" "Continue feature"
git checkout -q main
commit README.md "More docs" "Document"
git checkout -q -b release/1.x v1.0
commit hotfix.txt "fix" "Hotfix"
git checkout -q main
cd - >/dev/null
git clone -q --bare "$work/demo" "$out/demo.git"
git -C "$out/demo.git" repack -adq
git clone -q --bare "$work/demo" "$out/team/project.git"
git -C "$out/team/project.git" repack -adq
git init -q --bare -b main "$out/empty.git"
for r in "$out"/demo.git "$out"/team/project.git "$out"/empty.git; do
  rm -rf "$r/hooks" "$r/logs" "$r/FETCH_HEAD" "$r/info/refs" "$r/objects/info/packs" "$r/branches"
  git -C "$r" config --unset remote.origin.url 2>/dev/null || true
  git -C "$r" config --remove-section remote.origin 2>/dev/null || true
done

hg init "$out/demo-hg"; cd "$out/demo-hg"
for i in 1 2 3; do
  printf 'line %s\n' "$i" >> file.txt; hg -q add file.txt 2>/dev/null || true
  hg -q commit -u "Ada Fixture <ada@fixture.invalid>" -d "2024-01-0${i} 12:00:00 +0000" -m "Change $i"
done
hg -q bookmark -r 1 stable
hg -q branch other; printf 'other\n' > other.txt; hg -q add other.txt
hg -q commit -u "Ada Fixture <ada@fixture.invalid>" -d "2024-01-04 12:00:00 +0000" -m "Other branch"
hg -q update null   # a served repo needs no working copy (and its dirstate holds mtimes)
cd - >/dev/null
rm -rf "$out/demo-hg/.hg/cache" "$out/demo-hg/.hg/wcache" "$out/demo-hg/.hg/undo"* \
  "$out/demo-hg/.hg/store/undo"* "$out/demo-hg/.hg/last-message.txt" "$out/demo-hg/.hg/dirstate"
# git does not track empty directories, and git needs refs/ and objects/ to see a repository
find "$out" -type d -empty -exec touch {}/.keep \;
echo "fixtures rebuilt in $out"
