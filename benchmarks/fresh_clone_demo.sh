#!/bin/bash
# The README's first command from a fresh clone with an empty cache, timed step by step.
#
#   benchmarks/fresh_clone_demo.sh [REPO] [BRANCH]
#
# REUSE_SITE_PACKAGES=/path/to/.venv/lib/python3.11/site-packages makes the new venv see an existing
# install of torch & co. (a .pth line) instead of downloading them again; unset, the README's pip line runs
# as written (torch==2.14.1 torchvision==0.29.1 installed). ADAWISE_CACHE is a new empty folder, so the
# embedded world comes from the shipped weights (or is trained), and the stream's shifted domains are built.
set -e
repo=${1:-$(git rev-parse --show-toplevel)}
branch=${2:-$(git -C "$repo" rev-parse --abbrev-ref HEAD)}
work=$(mktemp -d /tmp/adawise-fresh-XXXXXX)
export ADAWISE_CACHE=$work/cache
unset PYTHONPATH
t0=$(date +%s.%N)
git clone -q -b "$branch" "$repo" "$work/clone" && cd "$work/clone"
t1=$(date +%s.%N)
apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
t2=$(date +%s.%N)
python3 -m venv .venv && . .venv/bin/activate
if [ -n "$REUSE_SITE_PACKAGES" ]; then
  echo "$REUSE_SITE_PACKAGES" > "$(python -c 'import site; print(site.getsitepackages()[0])')/reused.pth"
  pip install -q -e .
else
  pip install -q torch==2.14.1 torchvision==0.29.1 -e .
fi
t3=$(date +%s.%N)
adawise demo
t4=$(date +%s.%N)
python - "$t0" "$t1" "$t2" "$t3" "$t4" "${REUSE_SITE_PACKAGES:+ (torch reused, not installed)}" <<'PY'
import os, sys
t = list(map(float, sys.argv[1:6]))
print(f"TIMES clone {t[1]-t[0]:.1f} s, apt-get {t[2]-t[1]:.1f} s, venv + pip install{sys.argv[6]} {t[3]-t[2]:.1f} s, "
      f"adawise demo {t[4]-t[3]:.1f} s, total {t[4]-t[0]:.1f} s; load average {os.getloadavg()}")
PY
echo "clone and cache in $work (remove it when done)"
