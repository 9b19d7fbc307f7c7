#!/usr/bin/env bash
# The tunnel comparison bench (issue 12): iperf3 from hostA to hostB through each tunnel between
# gwA and gwB, in the four namespaces of tests/lab/two-gateways.sh, all in one run on this
# machine:
#
#   veth            plain routing gwA -> gwB, no tunnel (the ceiling)
#   iketcp-kernel   iketcp gateway, both sides on kernel TCP
#   iketcp-smoltcp  iketcp gateway, gwB on its own TCP stack (smoltcp on a TAP)
#   iketcp-af_xdp   the same with smoltcp on AF_XDP sockets on gwB's link (copy mode on veth)
#   iketcp-kernel-no-offload  iketcp-kernel with [tun] offload = false (one syscall per packet)
#   openvpn-tcp     OpenVPN over TCP, AES-256-GCM, its defaults
#   openvpn-tcp-tuned  the same with tcp-nodelay and the kernel's own socket buffers
#   openvpn-udp     OpenVPN over UDP, AES-256-GCM (reference)
#   boringtun       WireGuard in userspace (boringtun-cli, configured with wg)
#
# For each tunnel, congestion control (cubic, bbr; set in every namespace, so inner and outer
# TCP use it) and stream count (1, 4): RUNS runs of SECS s, the median; and ping latency from
# hostA to hostB, idle and during a 1-stream run. LOSS (e.g. 1%) drops that share of packets at
# random on the link between gwA and gwB, both ways (nftables), for TCP-in-TCP (RFC 9329 §9).
# As root. Installs what it needs from Debian
# (iperf3, openvpn, wireguard-tools) and crates.io (boringtun-cli).
#
#   bench/tunnels/compare.sh                     # everything: ~25 min
#   KINDS="veth iketcp-kernel" SECS=5 RUNS=1 CCS=cubic bench/tunnels/compare.sh
#   WORKERS=2 KINDS="iketcp-smoltcp iketcp-af_xdp" bench/tunnels/compare.sh   # TAP+splitter vs AF_XDP shared
#
# Writes $OUT/results.json (default docs/compare) and prints a table; the plot is drawn by
# `iketcp-bench plot $OUT/results.json $OUT/throughput.png`.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
SECS=${SECS:-10}
RUNS=${RUNS:-3}
CCS=${CCS:-cubic bbr}
STREAMS=${STREAMS:-1 4}
KINDS=${KINDS:-veth iketcp-kernel iketcp-smoltcp iketcp-af_xdp iketcp-kernel-no-offload openvpn-tcp openvpn-tcp-tuned openvpn-udp boringtun}
OUT=${OUT:-docs/compare}
LOSS=${LOSS:-}
# iketcp workers per gateway (two-gateways.sh reads it too).
export WORKERS=${WORKERS:-1}
export LAB=${LAB:-itc}
unset TUNNELS ATTACKER PEER_C LIMITS_B PORT_B  # two-gateways.sh options that must not leak in
export LAB_DIR=/tmp/$LAB
LABSH=$ROOT/tests/lab/two-gateways.sh
HA=$LAB-hostA GA=$LAB-gwA GB=$LAB-gwB HB=$LAB-hostB
WORK=$(mktemp -d /tmp/iketcp-compare.XXXXXX)
trap 'lab_down; rm -rf "$WORK"' EXIT

ns() { ip netns exec "$1" "${@:2}"; }

need_tools() {
    local missing=()
    command -v iperf3 >/dev/null || missing+=(iperf3)
    command -v openvpn >/dev/null || missing+=(openvpn)
    command -v wg >/dev/null || missing+=(wireguard-tools)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v ethtool >/dev/null || missing+=(ethtool)
    if [ ${#missing[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
    fi
    BORINGTUN=$(command -v boringtun-cli || echo "$HOME/.cargo/bin/boringtun-cli")
    if [ ! -x "$BORINGTUN" ]; then
        cargo install boringtun-cli --locked >/dev/null
    fi
    if [ -z "${BIN:-}" ]; then
        cargo build --release --bin iketcp -q
        BIN=$ROOT/target/release/iketcp
    fi
    export BIN
}

lab_down() {
    for f in "$WORK"/*.pid; do
        [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
        rm -f "$f"
    done
    if [ -n "${BORINGTUN:-}" ]; then pkill -f "^$BORINGTUN " 2>/dev/null || true; fi
    "$LABSH" down >/dev/null 2>&1 || true
    rm -f /var/run/wireguard/wgca.sock /var/run/wireguard/wgcb.sock
}

# The four namespaces, no tunnel yet; congestion control $1 everywhere.
lab_net() {
    local cc=$1 transport=${2:-kernel}
    TRANSPORT_B=$transport "$LABSH" net >/dev/null
    for n in $HA $GA $GB $HB; do ns "$n" sysctl -qw net.ipv4.tcp_congestion_control="$cc"; done
    if [ -n "$LOSS" ]; then
        # Random loss on each gateway's egress to the other. nftables, not netem: this kernel has
        # no sch_netem (loss only, no added delay). In 100,000ths: 1% -> 1000.
        local per
        per=$(python3 -c "print(round(float('${LOSS%\%}') * 1000))")
        for pair in "$GA ga1" "$GB gb1"; do
            set -- $pair
            # Segmentation before the drop: one rule hit per wire packet, not per 64 KiB
            # super-packet (which would lose up to 45 segments at once).
            ns "$1" ethtool -K "$2" tso off gso off >/dev/null
            ns "$1" nft add table inet loss
            ns "$1" nft add chain inet loss out '{ type filter hook postrouting priority 0; }'
            ns "$1" nft add rule inet loss out oifname "$2" numgen random mod 100000 '<' "$per" drop
        done
    fi
}

# --- the tunnels: each sets up gwA <-> gwB and the routes between the sites ---

up_veth() {
    ns $GA ip route add 203.0.113.0/24 via 192.0.2.2
    ns $GB ip route add 198.51.100.0/24 via 192.0.2.1
}

up_iketcp() {
    TRANSPORT_B=$1 "$LABSH" start gwB
    TRANSPORT_B=$1 "$LABSH" start gwA
}

openvpn_pki() {
    [ -f "$WORK/ca.crt" ] && return
    local o="openssl"
    $o ecparam -name prime256v1 -genkey -noout -out "$WORK/ca.key" 2>/dev/null
    $o req -x509 -new -key "$WORK/ca.key" -subj /CN=compare-ca -days 2 -out "$WORK/ca.crt" 2>/dev/null
    for side in server client; do
        $o ecparam -name prime256v1 -genkey -noout -out "$WORK/$side.key" 2>/dev/null
        $o req -new -key "$WORK/$side.key" -subj "/CN=$side" -out "$WORK/$side.csr" 2>/dev/null
        printf 'extendedKeyUsage=%s\n' "$([ $side = server ] && echo serverAuth || echo clientAuth)" >"$WORK/$side.ext"
        $o x509 -req -in "$WORK/$side.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" -CAcreateserial \
            -days 2 -extfile "$WORK/$side.ext" -out "$WORK/$side.crt" 2>/dev/null
    done
    chmod 600 "$WORK"/*.key
}

# OpenVPN point-to-point in TLS mode (static-key mode cannot do AES-256-GCM): $1 tcp|udp,
# $2 default|tuned.
up_openvpn() {
    local proto=$1 flavour=$2 extra=()
    openvpn_pki
    if [ "$flavour" = tuned ]; then extra=(--tcp-nodelay --sndbuf 0 --rcvbuf 0 --txqueuelen 1000); fi
    local common=(--dev tun --topology p2p --data-ciphers AES-256-GCM --cipher AES-256-GCM
        --ca "$WORK/ca.crt" --dh none --verb 1 --daemon)
    local sp=tcp-server cp=tcp-client
    if [ "$proto" = udp ]; then sp=udp cp=udp; fi
    ns $GB openvpn --writepid "$WORK/ovpn-b.pid" --proto "$sp" --local 192.0.2.2 --lport 1194 --tls-server \
        --cert "$WORK/server.crt" --key "$WORK/server.key" --ifconfig 10.8.0.1 10.8.0.2 \
        --route 198.51.100.0 255.255.255.0 --log "$WORK/ovpn-b.log" "${common[@]}" "${extra[@]}"
    sleep 0.5
    ns $GA openvpn --writepid "$WORK/ovpn-a.pid" --proto "$cp" --remote 192.0.2.2 1194 --nobind --tls-client \
        --cert "$WORK/client.crt" --key "$WORK/client.key" --ifconfig 10.8.0.2 10.8.0.1 \
        --route 203.0.113.0 255.255.255.0 --log "$WORK/ovpn-a.log" "${common[@]}" "${extra[@]}"
}

up_boringtun() {
    local ka kb
    ka=$(wg genkey) kb=$(wg genkey)
    WG_SUDO=1 ns $GA "$BORINGTUN" wgca --disable-drop-privileges >/dev/null 2>&1
    WG_SUDO=1 ns $GB "$BORINGTUN" wgcb --disable-drop-privileges >/dev/null 2>&1
    sleep 0.5
    ns $GA wg set wgca private-key <(echo "$ka") listen-port 51820 \
        peer "$(echo "$kb" | wg pubkey)" endpoint 192.0.2.2:51820 allowed-ips 203.0.113.0/24
    ns $GB wg set wgcb private-key <(echo "$kb") listen-port 51820 \
        peer "$(echo "$ka" | wg pubkey)" endpoint 192.0.2.1:51820 allowed-ips 198.51.100.0/24
    ns $GA ip addr add 10.9.0.1/32 dev wgca
    ns $GB ip addr add 10.9.0.2/32 dev wgcb
    ns $GA ip link set wgca mtu 1420 up
    ns $GB ip link set wgcb mtu 1420 up
    ns $GA ip route add 203.0.113.0/24 dev wgca
    ns $GB ip route add 198.51.100.0/24 dev wgcb
}

tunnel_up() {
    case $1 in
        veth) up_veth ;;
        iketcp-kernel) up_iketcp kernel ;;
        iketcp-smoltcp) up_iketcp smoltcp ;;
        iketcp-af_xdp) up_iketcp smoltcp ;;
        iketcp-kernel-no-offload) up_iketcp kernel ;;
        openvpn-tcp) up_openvpn tcp default ;;
        openvpn-tcp-tuned) up_openvpn tcp tuned ;;
        openvpn-udp) up_openvpn udp default ;;
        boringtun) up_boringtun ;;
        *) echo "unknown tunnel $1" >&2; exit 2 ;;
    esac
}

# Up when hostA pings hostB (30 s).
wait_tunnel() {
    for _ in $(seq 150); do
        if ns $HA ping -c 1 -W 1 203.0.113.10 >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    echo "tunnel $1 did not come up" >&2
    return 1
}

# One iperf3 run: receiver Gbit/s. $1 streams.
iperf_once() {
    ns $HB iperf3 -s -1 -D -I "$WORK/iperf.pid" >/dev/null
    sleep 0.3
    ns $HA iperf3 -c 203.0.113.10 -P "$1" -t "$SECS" -J >"$WORK/iperf.json" 2>/dev/null || true
    python3 - "$WORK/iperf.json" <<'PY'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
    print("%.3f" % (d["end"]["sum_received"]["bits_per_second"] / 1e9))
except Exception:
    print("0")
PY
    kill "$(cat "$WORK/iperf.pid" 2>/dev/null)" 2>/dev/null || true
}

# Median ping RTT in ms over $1 pings 0.1 s apart.
ping_median() {
    ns $HA ping -c "$1" -i 0.1 -W 1 203.0.113.10 2>/dev/null |
        python3 -c '
import re, sys
r = sorted(float(m.group(1)) for m in re.finditer(r"time=([0-9.]+)", sys.stdin.read()))
print("%.3f" % r[len(r) // 2] if r else "null")'
}

cpu_line() {
    local flags=()
    for f in avx512f vaes vpclmulqdq aes; do grep -qw "$f" /proc/cpuinfo && flags+=("$f"); done
    printf '%s|%s|%s' "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')" "$(nproc)" "${flags[*]}"
}

need_tools
# A namespace may only pick a congestion control the host allows (net.ipv4.tcp_allowed_...).
ALLOWED=$(cat /proc/sys/net/ipv4/tcp_allowed_congestion_control)
trap 'lab_down; sysctl -qw net.ipv4.tcp_allowed_congestion_control="$ALLOWED"; rm -rf "$WORK"' EXIT
sysctl -qw net.ipv4.tcp_allowed_congestion_control="$(echo "$ALLOWED $CCS" | tr ' ' '\n' | sort -u | tr '\n' ' ')"
mkdir -p "$OUT"
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
IFS='|' read -r CPU CORES FLAGS <<<"$(cpu_line)"
echo "compare: $CPU, $CORES cores, flags: $FLAGS; $("$BIN" --version), $WORKERS worker(s) per iketcp gateway; ${SECS}s x $RUNS runs, median${LOSS:+; random loss $LOSS on the outer link, TSO/GSO off there}"
for cc in $CCS; do
    for t in $KINDS; do
        lab_down
        transport=kernel
        [ "$t" = iketcp-smoltcp ] && transport=smoltcp
        export PORT_B=tap
        [ "$t" = iketcp-af_xdp ] && transport=smoltcp && PORT_B=af_xdp
        export TUN_OFFLOAD=true
        [ "$t" = iketcp-kernel-no-offload ] && TUN_OFFLOAD=false
        lab_net "$cc" "$transport"
        tunnel_up "$t"
        if ! wait_tunnel "$t"; then
            echo "{\"tunnel\":\"$t\",\"cc\":\"$cc\",\"error\":\"did not come up\"}" >>"$RESULTS"
            continue
        fi
        idle=$(ping_median 20)
        for s in $STREAMS; do
            runs=()
            loaded=null
            for r in $(seq "$RUNS"); do
                if [ "$s" = 1 ] && [ "$r" = 1 ]; then
                    # Latency under load: pings during the first 1-stream run.
                    (sleep 1; ping_median $(( (SECS - 2) * 10 )) >"$WORK/loaded") &
                    runs+=("$(iperf_once "$s")")
                    wait
                    loaded=$(cat "$WORK/loaded")
                else
                    runs+=("$(iperf_once "$s")")
                fi
            done
            med=$(printf '%s\n' "${runs[@]}" | sort -n | sed -n "$(( (${#runs[@]} + 1) / 2 ))p")
            printf '%-18s %-5s %s stream(s): %7s Gbit/s  (runs %s)  ping idle %s ms, loaded %s ms\n' \
                "$t" "$cc" "$s" "$med" "${runs[*]}" "$idle" "$loaded"
            echo "{\"tunnel\":\"$t\",\"cc\":\"$cc\",\"loss\":\"$LOSS\",\"streams\":$s,\"gbps\":[$(IFS=,; echo "${runs[*]}")],\"median_gbps\":$med,\"ping_idle_ms\":$idle,\"ping_loaded_ms\":$loaded}" >>"$RESULTS"
        done
    done
done
lab_down
python3 - "$RESULTS" "$OUT/results.json" "$CPU" "$CORES" "$FLAGS" "$SECS" "$RUNS" "$("$BIN" --version)" "$WORKERS" <<'PY'
import json, sys, datetime
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
out = {
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
    "cpu": sys.argv[3], "cores": int(sys.argv[4]), "flags": sys.argv[5].split(),
    "seconds": int(sys.argv[6]), "runs": int(sys.argv[7]), "iketcp": sys.argv[8],
    "iketcp_workers": int(sys.argv[9]),
    "command": "bench/tunnels/compare.sh",
    "results": rows,
}
json.dump(out, open(sys.argv[2], "w"), indent=1)
PY
echo "wrote $OUT/results.json"
