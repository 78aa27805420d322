#!/usr/bin/env bash
# The benchmarks: installs what they need (scripts/setup.sh), then runs `amqscale bench`
# with this script's arguments (the CLI starts the peers it needs via amqscale.testing).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/amqscale bench "$@"
