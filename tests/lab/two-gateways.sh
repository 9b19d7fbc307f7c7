#!/usr/bin/env bash
# Two iketcp gateways between two hosts, each in its own network namespace:
#
#   hostA 198.51.100.10 ── gwA 198.51.100.1 | 192.0.2.1 ══ TCP 4500 ══ 192.0.2.2 | 203.0.113.1 gwB ── 203.0.113.10 hostB
#
# gwA initiates over kernel TCP; gwB listens, over kernel TCP or (TRANSPORT_B=smoltcp) over its
# own userspace TCP stack on a TAP device bridged to the link (the DPDK-style mode).
#
#   tests/lab/two-gateways.sh up        # build nothing; BIN=path/to/iketcp (default target/debug/iketcp)
#   tests/lab/two-gateways.sh net       # like up, without starting the gateways (to capture first)
#   tests/lab/two-gateways.sh status    # iketcp status of both gateways
#   tests/lab/two-gateways.sh start gwB # (re)start one gateway
#   tests/lab/two-gateways.sh stop gwB [SIGNAL]
#   tests/lab/two-gateways.sh bench     # iperf3 hostA -> hostB, 1 and 4 streams, 10 s, median of 3
#   tests/lab/two-gateways.sh down      # stop the gateways, delete the namespaces and files
#
# Then e.g.: ip netns exec itl-hostA ping 203.0.113.10
# Environment: LAB (name prefix, default itl), LAB_DIR (default /tmp/$LAB), BIN, TRANSPORT_B,
# WORKERS (per gateway, default 1), KEYLOG_DIR (Wireshark key tables in KEYLOG_DIR/gwA and
# KEYLOG_DIR/gwB; secrets), ESP_PROPOSALS (comma-separated, e.g. aes256gcm16-noesn, for both),
# ATTACKER (any value: a hostile host, namespace $LAB-atk, 192.0.2.65-126, wired to gwB),
# LIMITS_B (lines of gwB's [limits] section, \n-separated), TUNNELS (N tunnels between host
# address pairs instead of one between the sites), REKEY_TIME, CHILD_REKEY_TIME, PEER_C (any
# value: a third gateway gwC, namespace $LAB-gwC, 192.0.2.130 wired to gwB, with a tunnel of its
# own from its address 198.51.100.200 inside to hostB's site), TUN_OFFLOAD (false: gwA's and
# gwB's [tun] offload off), PORT_B (with TRANSPORT_B=smoltcp: tap, the default, bridged to the
# link; or af_xdp, AF_XDP sockets on gb1 itself with the XDP program attached, no bridge).
set -euo pipefail

LAB=${LAB:-itl}
DIR=${LAB_DIR:-/tmp/$LAB}
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${BIN:-$HERE/../../target/debug/iketcp}
TRANSPORT_B=${TRANSPORT_B:-kernel}
PORT_B=${PORT_B:-tap}
WORKERS=${WORKERS:-1}
KEYLOG_DIR=${KEYLOG_DIR:-}
ESP_PROPOSALS=${ESP_PROPOSALS:-}
HA=$LAB-hostA GA=$LAB-gwA GB=$LAB-gwB HB=$LAB-hostB AT=$LAB-atk GC=$LAB-gwC

config_a() {
    cat <<CFG
[gateway]
workers = $WORKERS
transport = "kernel"
listen = ["192.0.2.1"]
control_socket = "$DIR/gwA.sock"
metrics = "127.0.0.1:9469"
log_level = "debug"
$(keylog_line gwA)

[tun]
name = "iketcp0"
addresses = ["198.51.100.1/32"]
mss_clamp = true
offload = ${TUN_OFFLOAD:-true}
CFG
    if [ -n "${TUNNELS:-}" ]; then
        for i in $(seq 0 $((TUNNELS - 1))); do
            cat <<CFG

[[connection]]
name = "t$i"
local_addrs = ["192.0.2.1"]
remote_addrs = ["192.0.2.2"]
local_id = "@a$i.example"
remote_id = "@b.example"
psk_file = "psk.secret"
local_ts = ["$(tunnel_a "$i")/32"]
remote_ts = ["$(tunnel_b "$i")/32"]
start = "initiate"
dpd_delay = "${DPD_A:-5s}"
$(rekey_lines)
$(esp_line)
CFG
        done
        return
    fi
    cat <<CFG

[[connection]]
name = "site-b"
local_addrs = ["192.0.2.1"]
remote_addrs = ["192.0.2.2"]
local_id = "@a.example"
remote_id = "@b.example"
psk_file = "psk.secret"
local_ts = ["198.51.100.0/24"]
remote_ts = ["203.0.113.0/24"]
start = "initiate"
dpd_delay = "${DPD_A:-5s}"
$(rekey_lines)
$(esp_line)
CFG
}

# gwC (PEER_C): one more site behind gwB, a single host (gwC itself, 198.51.100.200).
config_c() {
    cat <<CFG
[gateway]
workers = 1
transport = "kernel"
listen = ["192.0.2.130"]
control_socket = "$DIR/gwC.sock"
log_level = "debug"

[tun]
name = "iketcp0"
addresses = ["198.51.100.200/32"]
mss_clamp = true

[[connection]]
name = "site-b"
local_addrs = ["192.0.2.130"]
remote_addrs = ["192.0.2.2"]
local_id = "@c.example"
remote_id = "@b.example"
psk_file = "psk.secret"
local_ts = ["198.51.100.200/32"]
remote_ts = ["203.0.113.0/24"]
start = "initiate"
dpd_delay = "5s"
CFG
}

# gwB's side of gwC's tunnel.
config_b_for_c() {
    cat <<CFG

[[connection]]
name = "site-c"
local_addrs = ["192.0.2.2"]
remote_addrs = "%any"
local_id = "@b.example"
remote_id = "@c.example"
psk_file = "psk.secret"
local_ts = ["203.0.113.0/24"]
remote_ts = ["198.51.100.200/32"]
start = "listen"
dpd_delay = "30s"
CFG
}

config_b() {
    cat <<CFG
[gateway]
workers = $WORKERS
transport = "$TRANSPORT_B"
listen = ["192.0.2.2"]
control_socket = "$DIR/gwB.sock"
metrics = "127.0.0.1:9469"
log_level = "debug"
$(keylog_line gwB)
CFG
    if [ "$TRANSPORT_B" = smoltcp ]; then
        cat <<CFG

[smoltcp]
address = "192.0.2.2/24"
$(if [ "$PORT_B" = af_xdp ]; then printf 'port = "af_xdp"\ninterface = "gb1"  # smoltcp takes gb1'"'"'s MAC'; else printf 'tap = "iketcp-tap0"\nmac = "02:00:00:00:02:02"'; fi)
CFG
    fi
    cat <<CFG

[tun]
name = "iketcp0"
addresses = ["203.0.113.1/32"]
mss_clamp = true
offload = ${TUN_OFFLOAD:-true}

[limits]
$(printf '%b' "${LIMITS_B:-}")
CFG
    if [ -n "${PEER_C:-}" ]; then config_b_for_c; fi
    if [ -n "${TUNNELS:-}" ]; then
        for i in $(seq 0 $((TUNNELS - 1))); do
            cat <<CFG

[[connection]]
name = "t$i"
local_addrs = ["192.0.2.2"]
remote_addrs = "%any"
local_id = "@b.example"
remote_id = "@a$i.example"
psk_file = "psk.secret"
local_ts = ["$(tunnel_b "$i")/32"]
remote_ts = ["$(tunnel_a "$i")/32"]
start = "listen"
dpd_delay = "${DPD_B:-30s}"
$(rekey_lines)
$(esp_line)
CFG
        done
        return
    fi
    cat <<CFG

[[connection]]
name = "site-a"
local_addrs = ["192.0.2.2"]
remote_addrs = "%any"
local_id = "@b.example"
remote_id = "@a.example"
psk_file = "psk.secret"
local_ts = ["203.0.113.0/24"]
remote_ts = ["198.51.100.0/24"]
start = "listen"
dpd_delay = "${DPD_B:-30s}"
$(rekey_lines)
$(esp_line)
CFG
}

# TUNNELS=N: tunnel $1 joins hostA's address tunnel_a to hostB's address tunnel_b (up to 1,000:
# 4 addresses on hostA, 250 on hostB), each pair its own connection, IKE SA and Child SA.
tunnel_a() { echo "198.51.100.$((10 + $1 / 250))"; }
tunnel_b() { echo "203.0.113.$((2 + $1 % 250))"; }

# Optional rekey times of every connection (REKEY_TIME: the IKE SA's, CHILD_REKEY_TIME).
rekey_lines() {
    if [ -n "${REKEY_TIME:-}" ]; then echo "rekey_time = \"$REKEY_TIME\""; fi
    if [ -n "${CHILD_REKEY_TIME:-}" ]; then echo "child_rekey_time = \"$CHILD_REKEY_TIME\""; fi
}

# The optional [gateway] key log line of gateway $1.
keylog_line() {
    if [ -n "$KEYLOG_DIR" ]; then echo "keylog_dir = \"$KEYLOG_DIR/$1\""; fi
}

# The optional esp_proposals line of a connection.
esp_line() {
    if [ -n "$ESP_PROPOSALS" ]; then
        echo "esp_proposals = [\"${ESP_PROPOSALS//,/\", \"}\"]"
    fi
}

ns() { ip netns exec "$1" "${@:2}"; }

net() {
    mkdir -p "$DIR"
    chmod 700 "$DIR"
    if [ -n "$KEYLOG_DIR" ]; then
        (umask 077; mkdir -p "$KEYLOG_DIR/gwA" "$KEYLOG_DIR/gwB")
    fi
    for n in $HA $GA $GB $HB; do ip netns add "$n"; ns "$n" ip link set lo up; done
    ip link add ha0 netns $HA type veth peer name ga0 netns $GA
    ip link add ga1 netns $GA type veth peer name gb1 netns $GB
    ip link add gb0 netns $GB type veth peer name hb0 netns $HB
    ns $HA ip addr add 198.51.100.10/24 dev ha0
    ns $HA ip link set ha0 up
    ns $HA ip route add default via 198.51.100.1
    ns $GA ip addr add 198.51.100.1/24 dev ga0
    ns $GA ip addr add 192.0.2.1/24 dev ga1
    ns $GA ip link set ga0 up
    ns $GA ip link set ga1 up
    ns $GA sysctl -qw net.ipv4.ip_forward=1
    ns $GB ip addr add 203.0.113.1/24 dev gb0
    ns $GB ip link set gb0 up
    ns $GB ip link set gb1 up
    if [ "$TRANSPORT_B" != smoltcp ]; then
        ns $GB ip addr add 192.0.2.2/24 dev gb1
    fi
    ns $GB sysctl -qw net.ipv4.ip_forward=1
    ns $HB ip addr add 203.0.113.10/24 dev hb0
    if [ -n "${TUNNELS:-}" ]; then
        for i in $(seq 0 $(( (TUNNELS - 1) / 250 ))); do
            [ "$(tunnel_a $((i * 250)))" = 198.51.100.10 ] || ns $HA ip addr add "$(tunnel_a $((i * 250)))/24" dev ha0
        done
        for i in $(seq 0 $(( TUNNELS < 250 ? TUNNELS - 1 : 249 ))); do
            [ "$(tunnel_b "$i")" = 203.0.113.10 ] || ns $HB ip addr add "$(tunnel_b "$i")/24" dev hb0
        done
    fi
    ns $HB ip link set hb0 up
    ns $HB ip route add default via 203.0.113.1
    if [ -n "${ATTACKER:-}" ]; then
        # A hostile host that reaches gwB's listener from 62 addresses of its own (192.0.2.65-126)
        # over a second link (the hostile battery, control/cli/tests/hostile.rs).
        ip netns add $AT
        ns $AT ip link set lo up
        ip link add atk0 netns $AT type veth peer name gb2 netns $GB
        ns $GB ip link set gb2 up
        ns $GB ip route add 192.0.2.64/26 dev gb2
        for i in $(seq 65 126); do ns $AT ip addr add 192.0.2.$i/26 dev atk0; done
        ns $AT ip link set atk0 up
        ns $AT ip route add 192.0.2.2/32 dev atk0
    fi
    if [ -n "${PEER_C:-}" ]; then
        ip netns add $GC
        ns $GC ip link set lo up
        ip link add gc1 netns $GC type veth peer name gb3 netns $GB
        ns $GB ip link set gb3 up
        ns $GB ip route add 192.0.2.128/26 dev gb3
        ns $GC ip addr add 192.0.2.130/26 dev gc1
        ns $GC ip link set gc1 up
        ns $GC ip route add 192.0.2.2/32 dev gc1
    fi
    # Checksums of veth traffic are left to the receiver; smoltcp (on the TAP or AF_XDP) needs
    # them filled. Only then: without TX checksum offload ga1 loses TSO too, which would slow
    # kernel TCP on the link for everything else.
    if [ "$TRANSPORT_B" = smoltcp ]; then ns $GA ethtool -K ga1 tx off >/dev/null 2>&1 || true; fi
    (umask 077; printf 'iketcp lab pre-shared key, not for real use\n' >"$DIR/psk.secret")
    config_a >"$DIR/gwA.toml"
    config_b >"$DIR/gwB.toml"
    chmod 600 "$DIR/gwA.toml" "$DIR/gwB.toml"
    if [ -n "${PEER_C:-}" ]; then config_c >"$DIR/gwC.toml"; chmod 600 "$DIR/gwC.toml"; fi
}

up() {
    net
    start gwB
    start gwA
    if [ -n "${PEER_C:-}" ]; then start gwC; fi
}

start() {
    local g=$1 n
    case $g in gwA) n=$GA ;; gwB) n=$GB ;; gwC) n=$GC ;; *) echo "no gateway $g" >&2; exit 2 ;; esac
    # Not through a function: $! must be the gateway itself (ip netns exec execs it).
    ip netns exec "$n" "$BIN" gateway --config "$DIR/$g.toml" --no-pin >>"$DIR/$g.log" 2>&1 &
    echo $! >"$DIR/$g.pid"
    # Up when its control socket answers.
    for _ in $(seq 100); do
        if "$BIN" status --socket "$DIR/$g.sock" >/dev/null 2>&1; then break; fi
        sleep 0.1
    done
    if [ "$g" = gwB ] && [ "$TRANSPORT_B" = smoltcp ] && [ "$PORT_B" = af_xdp ]; then
        : # The XDP program on gb1 hands gwB its frames; nothing to wire.
    elif [ "$g" = gwB ] && [ "$TRANSPORT_B" = smoltcp ] && ! ns $GB ip link show br0 >/dev/null 2>&1; then
        # The TAP is gwB's NIC: bridge it to the link towards gwA.
        ns $GB ip link add br0 type bridge
        ns $GB ip link set gb1 master br0
        # The attacker's link (ATTACKER=1) joins the same wire.
        if ns $GB ip link show gb2 >/dev/null 2>&1; then ns $GB ip link set gb2 master br0; fi
        ns $GB ip link set iketcp-tap0 master br0
        ns $GB ip link set iketcp-tap0 up
        ns $GB ip link set br0 up
    elif [ "$g" = gwB ] && [ "$TRANSPORT_B" = smoltcp ]; then
        ns $GB ip link set iketcp-tap0 master br0
        ns $GB ip link set iketcp-tap0 up
    fi
}

stop() {
    local g=$1 sig=${2:-TERM} pid
    pid=$(cat "$DIR/$g.pid" 2>/dev/null) || return 0
    kill -"$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$DIR/$g.pid"
}

status() {
    for g in gwA gwB gwC; do
        [ -S "$DIR/$g.sock" ] || continue
        echo "== $g"; "$BIN" status --socket "$DIR/$g.sock" || true
    done
}

# iperf3 receiver Gbit/s of one run: bench_one NS_CLIENT NS_SERVER ADDR STREAMS SECS
bench_one() {
    ns "$2" iperf3 -s -1 -D -I "$DIR/iperf.pid"
    sleep 0.3
    ns "$1" iperf3 -c "$3" -P "$4" -t "$5" -J |
        python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'
}

bench() {
    local secs=${SECS:-10}
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, avx512f: $(grep -qw avx512f /proc/cpuinfo && echo yes || echo no)"
    echo "iketcp: $("$BIN" --version), gwB transport $TRANSPORT_B, $WORKERS worker(s) per gateway"
    for streams in 1 4; do
        local runs=()
        for _ in 1 2 3; do runs+=("$(bench_one $HA $HB 203.0.113.10 "$streams" "$secs")"); done
        local med
        med=$(printf '%s\n' "${runs[@]}" | sort -n | sed -n 2p)
        echo "tunnel  $streams stream(s): median $med Gbit/s (runs ${runs[*]})"
        if [ "$TRANSPORT_B" = kernel ]; then
            runs=()
            for _ in 1 2 3; do runs+=("$(bench_one $GA $GB 192.0.2.2 "$streams" "$secs")"); done
            med=$(printf '%s\n' "${runs[@]}" | sort -n | sed -n 2p)
            echo "veth    $streams stream(s): median $med Gbit/s (runs ${runs[*]}) (gwA -> gwB, no tunnel)"
        fi
    done
}

down() {
    stop gwA KILL || true
    stop gwB KILL || true
    stop gwC KILL || true
    for n in $HA $GA $GB $HB $AT $GC; do ip netns del "$n" 2>/dev/null || true; done
    rm -rf "$DIR"
}

case ${1:-} in
    up) up ;;
    net) net ;;
    down) down ;;
    start) start "$2" ;;
    stop) stop "$2" "${3:-TERM}" ;;
    status) status ;;
    bench) bench ;;
    *) sed -n '2,24p' "$0"; exit 2 ;;
esac
