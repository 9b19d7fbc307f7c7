#!/usr/bin/env bash
# iketcp gateway against libreswan's pluto over RFC 9329 TCP, each in its own network namespace:
#
#   gw: iketcp gateway 192.0.2.1 (TUN 198.51.100.1, site 198.51.100.0/24)
#        ══ veth, TCP 4500 ══
#   pl: pluto 192.0.2.2 (site 203.0.113.0/24; no kernel ESP: its SAs live in the shim's log)
#
# pluto runs with tests/interop/espintcp_shim.c preloaded (it emulates the espintcp ULP and
# answers XFRM SA requests; see that file). Test-only: the interop test drives it.
#
#   libreswan-lab.sh up                 # namespaces, veth, shim built into $DIR, NSS database
#   libreswan-lab.sh pluto              # write ipsec.conf from the environment and start pluto
#   libreswan-lab.sh gateway            # write gw.toml from the environment and start iketcp
#   libreswan-lab.sh whack ARGS...      # ipsec whack against this pluto
#   libreswan-lab.sh stop pluto|gateway [SIGNAL]
#   libreswan-lab.sh down
#
# Environment: LAB (name prefix, default ilw), LAB_DIR (default /tmp/$LAB), BIN (iketcp),
# PLUTO_AUTO (add|start), PLUTO_IKE, PLUTO_ESP, PLUTO_PFS (yes|no), PLUTO_ESN (yes|no|either),
# PLUTO_DPD (seconds, 0 = off), GW_START (initiate|listen), GW_PROPOSALS, GW_ESP_PROPOSALS,
# GW_ESN (true|false|both), GW_DPD, GW_RECONNECT_PROBE (liveness|rekey).
set -euo pipefail

LAB=${LAB:-ilw}
DIR=${LAB_DIR:-/tmp/$LAB}
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${BIN:-$HERE/../../target/debug/iketcp}
GW=$LAB-gw PL=$LAB-pl
PLUTO=${PLUTO:-/usr/libexec/ipsec/pluto}
PSK='interop test secret, long enough for libreswan'

up() {
    down_quiet
    rm -rf "$DIR"
    mkdir -p "$DIR/run" "$DIR/nss"
    chmod 700 "$DIR"
    ip netns add "$GW"
    ip netns add "$PL"
    ip link add "$LAB-g" netns "$GW" type veth peer name "$LAB-p" netns "$PL"
    ip -n "$GW" addr add 192.0.2.1/24 dev "$LAB-g"
    ip -n "$PL" addr add 192.0.2.2/24 dev "$LAB-p"
    for ns in "$GW" "$PL"; do
        ip -n "$ns" link set lo up
    done
    ip -n "$GW" link set "$LAB-g" up
    ip -n "$PL" link set "$LAB-p" up
    # pluto's larval (ALLOCSPI) SAs would expire after 30 s and take the Child SA with them: the
    # shim answers the SA installs, so the kernel never sees them completed.
    ip netns exec "$PL" sysctl -qw net.core.xfrm_acq_expires=3600
    cc -shared -fPIC -O1 -Wall -o "$DIR/espintcp_shim.so" "$HERE/espintcp_shim.c" -ldl -lpthread
    ipsec initnss --nssdir "$DIR/nss" >/dev/null
    (umask 077 && printf '%s\n' "$PSK" >"$DIR/psk.secret")
    (umask 077 && printf '@pluto.example @gw.example : PSK "%s"\n' "$PSK" >"$DIR/ipsec.secrets")
    rm -f "$DIR/inject.fifo" && mkfifo -m 600 "$DIR/inject.fifo"
}

pluto_conf() {
    local esn=${PLUTO_ESN:-no}
    cat <<CFG
config setup
    listen-tcp=yes
    logfile=$DIR/pluto.log
    logappend=yes
    plutodebug=base
    dumpdir=$DIR/run

conn iketcp
    ikev2=yes
    authby=secret
    left=192.0.2.2
    leftid=@pluto.example
    leftsubnet=203.0.113.0/24
    leftupdown=/bin/true
    right=192.0.2.1
    rightid=@gw.example
    rightsubnet=198.51.100.0/24
    enable-tcp=yes
    tcp-remoteport=4500
    ike=${PLUTO_IKE:-aes_gcm256-sha2_256-dh31}
    esp=${PLUTO_ESP:-aes_gcm256}
    pfs=${PLUTO_PFS:-yes}
    esn=$esn
    dpddelay=${PLUTO_DPD:-0}
    retransmit-timeout=60s
    rekey=yes
    ikelifetime=8h
    salifetime=4h
    auto=${PLUTO_AUTO:-add}
CFG
}

gateway_conf() {
    cat <<CFG
[gateway]
workers = 1
transport = "kernel"
listen = ["192.0.2.1"]
control_socket = "$DIR/gw.sock"
log_level = "debug"
keylog_dir = "keys"

[tun]
name = "iketcp0"
addresses = ["198.51.100.1/32"]

[[connection]]
name = "pluto"
local_addrs = ["192.0.2.1"]
remote_addrs = ["192.0.2.2"]
local_id = "@gw.example"
remote_id = "@pluto.example"
psk_file = "psk.secret"
proposals = [${GW_PROPOSALS:-\"aes256gcm16-prfsha256-x25519\"}]
esp_proposals = [${GW_ESP_PROPOSALS:-\"aes256gcm16-x25519\"}]
esn = ${GW_ESN:-false}
local_ts = ["198.51.100.0/24"]
remote_ts = ["203.0.113.0/24"]
start = "${GW_START:-initiate}"
reconnect_probe = "${GW_RECONNECT_PROBE:-liveness}"
CFG
    [ -n "${GW_DPD:-}" ] && echo "dpd_delay = \"$GW_DPD\""
    return 0
}

start_pluto() {
    pluto_conf >"$DIR/ipsec.conf"
    ip netns exec "$PL" env LD_PRELOAD="$DIR/espintcp_shim.so" \
        ESPINTCP_SHIM_LOG="$DIR/shim.log" ESPINTCP_SHIM_FIFO="$DIR/inject.fifo" \
        "$PLUTO" --nofork --config "$DIR/ipsec.conf" --rundir "$DIR/run" --nssdir "$DIR/nss" \
        --secretsfile "$DIR/ipsec.secrets" --ipsecdir "$DIR" --use-xfrm \
        >>"$DIR/pluto.out" 2>&1 &
    echo $! >"$DIR/pluto.pid"
    for _ in $(seq 100); do
        [ -S "$DIR/run/pluto.ctl" ] && break
        sleep 0.1
    done
    [ -S "$DIR/run/pluto.ctl" ] || { echo "pluto did not start" >&2; cat "$DIR/pluto.out" >&2; exit 1; }
    ip netns exec "$PL" ipsec addconn --config "$DIR/ipsec.conf" --ctlsocket "$DIR/run/pluto.ctl" \
        --autoall >>"$DIR/pluto.out" 2>&1
}

start_gateway() {
    gateway_conf >"$DIR/gw.toml"
    chmod 600 "$DIR/gw.toml"
    ip netns exec "$GW" "$BIN" gateway --config "$DIR/gw.toml" >>"$DIR/gw.log" 2>&1 &
    echo $! >"$DIR/gw.pid"
    for _ in $(seq 100); do
        [ -S "$DIR/gw.sock" ] && break
        sleep 0.1
    done
    [ -S "$DIR/gw.sock" ] || { echo "gateway did not start" >&2; tail -20 "$DIR/gw.log" >&2; exit 1; }
    # The control socket answers before the workers listen: wait for the listener too, or an
    # initiating pluto may find the port closed (it then backs off for many seconds).
    for _ in $(seq 100); do
        ip netns exec "$GW" ss -Hltn 'sport = :4500' | grep -q . && break
        sleep 0.1
    done
}

stop() {
    local what=$1 sig=${2:-TERM} pidf
    case $what in
        pluto) pidf=$DIR/pluto.pid ;;
        gateway) pidf=$DIR/gw.pid ;;
        *) echo "stop pluto|gateway" >&2; exit 2 ;;
    esac
    [ -f "$pidf" ] || return 0
    local pid
    pid=$(cat "$pidf")
    kill -"$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidf"
    [ "$what" = gateway ] && rm -f "$DIR/gw.sock"
    [ "$what" = pluto ] && rm -f "$DIR/run/pluto.ctl"
    return 0
}

down_quiet() {
    stop gateway KILL 2>/dev/null || true
    stop pluto KILL 2>/dev/null || true
    ip netns del "$GW" 2>/dev/null || true
    ip netns del "$PL" 2>/dev/null || true
}

case ${1:-} in
    up) up ;;
    pluto) start_pluto ;;
    gateway) start_gateway ;;
    whack) shift; ip netns exec "$PL" ipsec whack --rundir "$DIR/run" "$@" ;;
    stop) shift; stop "$@" ;;
    down) down_quiet; rm -rf "$DIR" ;;
    *) sed -n '2,20p' "$0"; exit 2 ;;
esac
