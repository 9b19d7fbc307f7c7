#!/usr/bin/env bash
# The long soak (not CI, it runs an hour): 1,000 tunnels between two iketcp gateways in network
# namespaces, Child SA rekeys every 10 s, IKE SA rekeys every minute, the TCP connection of a
# random tunnel reset every 5 s, UDP through every tunnel throughout; samples every minute.
# As root. The test it runs is control/cli/tests/soak.rs (CI runs its 2-minute, 100-tunnel form).
#
#   tests/soak/soak.sh                 # SOAK_TUNNELS=1000 SOAK_SECS=3600 SOAK_SAMPLE_SECS=60
#   SOAK_SECS=600 tests/soak/soak.sh   # shorter
set -euo pipefail
cd "$(dirname "$0")/../.."
export SOAK_TUNNELS=${SOAK_TUNNELS:-1000} SOAK_SECS=${SOAK_SECS:-3600} SOAK_SAMPLE_SECS=${SOAK_SAMPLE_SECS:-60}
echo "soak: $SOAK_TUNNELS tunnels, $SOAK_SECS s, a sample every $SOAK_SAMPLE_SECS s; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
exec cargo test --release -p iketcp-cli --test soak -- --nocapture --test-threads 1
