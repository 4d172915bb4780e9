#!/usr/bin/env bash
# Unpack real hand-drawn game art for the quality gates' held-out "supertux" family, idempotently.
#
# The art is Debian's `supertux-data` (SuperTux 0.6.3; images GPL-3+ / CC-BY-SA, see the copyright
# file copied next to them). It is never committed here: the package is fetched at test time with
# `apt-get download` and unpacked with `dpkg -x` (nothing is installed), into
#   ${ANIMENB_HOME:-~/.cache/animenb}/art/supertux/
#     creatures/    character sprites with their animation frames (walk cycles, idle, jump, ...)
#     background/   painted level backgrounds
#     copyright     the package's licence notice
#     .installed    stamp written last; a present stamp makes this script a no-op
#
# Usage: bash tests/art/install.sh        (prints the art root on its last line)
set -euo pipefail

PACKAGE=supertux-data
STAMP_VALUE="$PACKAGE images/creatures images/background"
ROOT="${ANIMENB_HOME:-$HOME/.cache/animenb}/art/supertux"

if [[ -f "$ROOT/.installed" && "$(cat "$ROOT/.installed")" == "$STAMP_VALUE" ]]; then
    echo "$ROOT"
    exit 0
fi
mkdir -p "$ROOT"
exec 9>"$ROOT/.install.lock"
flock 9  # two test sessions unpacking at once take turns
if [[ -f "$ROOT/.installed" && "$(cat "$ROOT/.installed")" == "$STAMP_VALUE" ]]; then
    echo "$ROOT"
    exit 0
fi
rm -f "$ROOT/.installed"
echo "animenb: fetching Debian's $PACKAGE (160 MB) into $ROOT" >&2
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# A fresh machine may have no package lists yet: fetch them once and try again.
(cd "$WORK" && { apt-get download "$PACKAGE" >&2 || { apt-get update -qq >&2 && apt-get download "$PACKAGE" >&2; }; })
dpkg -x "$WORK"/"$PACKAGE"_*.deb "$WORK/x"
IMAGES="$WORK/x/usr/share/games/supertux2/images"
rm -rf "$ROOT/creatures" "$ROOT/background"
cp -r "$IMAGES/creatures" "$IMAGES/background" "$ROOT/"
cp "$WORK/x/usr/share/doc/$PACKAGE/copyright" "$ROOT/copyright"
echo "$STAMP_VALUE" > "$ROOT/.installed"
echo "$ROOT"
