#!/bin/bash
# one device call: steps in order, each under its own limit and the call's deadline
set -u
T0=$(date +%s); LIMIT=${LIMIT:-585}
O=$OUT; export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
left() { echo $(( LIMIT - ($(date +%s) - T0) )); }
step() { # name seconds cmd...
  local n=$1 s=$2; shift 2; local l=$(left); [ $l -lt $s ] && s=$l
  if [ $s -lt 20 ]; then echo "SKIP $n (no time)"; return; fi
  echo "== $n (limit $s s, t=$(( $(date +%s) - T0 )))"
  ( timeout $s bash -c "$*" ) > "$O/$n.log" 2>&1; echo "rc=$?" >> "$O/$n.log"; tail -${TAIL:-12} "$O/$n.log"
}
python3 -c "import fla, torchao" 2>/dev/null || DS_BUILD_OPS=0 python3 -m pip install --no-deps --no-build-isolation -q .wheelhouse/* > $O/pip.log 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; python3 -c "import torch,triton;print(torch.__version__,triton.__version__)"
for s in "$@"; do eval "$s"; done
echo "total $(( $(date +%s) - T0 )) s"
