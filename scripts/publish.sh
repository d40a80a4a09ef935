#!/usr/bin/env bash
# Publish the book by hand to the gh-pages branch (CI does it on every push to main:
# .github/workflows/book.yml). Builds with the README's book command, then pushes _build/html.
#
#   scripts/publish.sh            build, then push to gh-pages
#   scripts/publish.sh --dry-run  build and stop before pushing
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"  # the same variable the Makefile reads
dry_run=false
case "${1:-}" in
  "") ;;
  --dry-run) dry_run=true ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac

make book

if "$dry_run"; then
  echo "publish: dry run; the book is in _build/html and nothing was pushed"
  exit 0
fi
# -n: add .nojekyll so Pages serves _static/, -p: push, -f: replace the branch's history.
"$VENV/bin/ghp-import" -n -p -f _build/html
echo "publish: pushed _build/html to the gh-pages branch"
