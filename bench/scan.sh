#!/usr/bin/env bash
# Discovery scan benchmark: certkeeper against `nmap --script ssl-cert` on the same 2,000
# loopback ports, 1,000 of which serve TLS (a private nginx, two workers) and 1,000 closed.
#
#   bench/scan.sh            # as root (installs nginx-light, nmap, time if missing)
#
# Environment:
#   PORT_BASE=20000          first port; TLS on PORT_BASE+2i, nothing on PORT_BASE+2i+1 (i < 1000)
#   CONCURRENCIES="64 128 256 512 1024"   certkeeper --concurrency values tried
#   REPEAT=3                 rounds (each: one certkeeper run per concurrency, one nmap run);
#                            medians are reported
#   NMAP_ARGS=""             extra nmap arguments (e.g. -T4); the default is the plain command
#   WAIT_IDLE=SECONDS        wait up to that long for the machine to be idle before the runs
#   KEEP=1                   keep the temporary directory (PKI, nginx conf, raw results)
#
# Fails (exit 1) unless both tools found a certificate on exactly the 1,000 TLS ports, the
# expected leaf each time, and certkeeper captured [leaf, intermediate] on every one.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PORT_BASE=${PORT_BASE:-20000}
TLS_COUNT=1000
PORT_COUNT=$((2 * TLS_COUNT))
PORT_LAST=$((PORT_BASE + PORT_COUNT - 1))
PORTS="$PORT_BASE-$PORT_LAST"
CONCURRENCIES=${CONCURRENCIES:-"64 128 256 512 1024"}
REPEAT=${REPEAT:-3}
NMAP_ARGS=${NMAP_ARGS:-}
KEEP=${KEEP:-0}
BIN="$ROOT/target/release/certkeeper"
# Flags only: nothing from the caller's environment changes the scan settings.
unset CERTKEEPER_CONCURRENCY CERTKEEPER_RATE CERTKEEPER_CONNECT_TIMEOUT_MS \
    CERTKEEPER_HANDSHAKE_TIMEOUT_MS CERTKEEPER_CONFIG_DIR

die() { echo "bench/scan.sh: $*" >&2; exit 1; }

# --- prerequisites --------------------------------------------------------------------
missing=()
command -v nginx >/dev/null || missing+=(nginx-light)
command -v nmap >/dev/null || missing+=(nmap)
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing ${missing[*]} (install them, or run as root)"
    echo "installing ${missing[*]}"
    apt-get install -y -o DPkg::Post-Invoke::= "${missing[@]}" >/dev/null ||
        { apt-get update >/dev/null && apt-get install -y -o DPkg::Post-Invoke::= "${missing[@]}" >/dev/null; }
fi
for t in openssl python3 ss; do command -v "$t" >/dev/null || die "$t is needed"; done
# Always (a no-op when up to date): a stale binary would measure old code.
(cd "$ROOT" && cargo build --release -p certkeeper)

# Two workers and 1,000 listening sockets each, plus up to ~1,000 client sockets.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -ge 4096 ] || die "ulimit -n is $(ulimit -n); 4096 or more is needed"

read -r eph_lo eph_hi </proc/sys/net/ipv4/ip_local_port_range
if [ "$PORT_BASE" -le "$eph_hi" ] && [ "$PORT_LAST" -ge "$eph_lo" ]; then
    die "ports $PORTS overlap the ephemeral range $eph_lo-$eph_hi; set PORT_BASE"
fi
busy=$(ss -Htan exclude time-wait "( sport >= :$PORT_BASE and sport <= :$PORT_LAST )" | wc -l)
[ "$busy" = 0 ] || die "$busy socket(s) already use ports $PORTS; set PORT_BASE"

# --- temporary directory and cleanup --------------------------------------------------
WORK=$(mktemp -d /tmp/certkeeper-bench-scan.XXXXXX)
NGINX_PID_FILE="$WORK/nginx/nginx.pid"
cleanup() {
    local code=$?
    if [ -s "$NGINX_PID_FILE" ]; then
        local pid
        pid=$(cat "$NGINX_PID_FILE")
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    if [ "$KEEP" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- test PKI: root, intermediate, 20 ECDSA P-256 and 5 RSA-2048 leaves ---------------
PKI="$WORK/pki"
mkdir -p "$PKI"
(
    cd "$PKI"
    cat >ca.ext <<'EOF'
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -keyout root.key -out root.pem -subj "/O=certkeeper bench/CN=Bench Root CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout int.key -out int.csr -subj "/O=certkeeper bench/CN=Bench Intermediate CA" 2>/dev/null
    openssl x509 -req -in int.csr -CA root.pem -CAkey root.key -CAcreateserial -days 1825 \
        -extfile ca.ext -out int.pem 2>/dev/null
    leaf() { # name keyalg-args... : key + cert signed by the intermediate, then leaf+intermediate
        local name=$1; shift
        printf '%s\n' "basicConstraints = critical, CA:FALSE" \
            "keyUsage = critical, digitalSignature, keyEncipherment" \
            "extendedKeyUsage = serverAuth" \
            "subjectAltName = DNS:$name.bench.test, IP:127.0.0.1" >"$name.ext"
        openssl req -new "$@" -nodes -keyout "$name.key" -out "$name.csr" \
            -subj "/O=certkeeper bench/CN=$name.bench.test" 2>/dev/null
        openssl x509 -req -in "$name.csr" -CA int.pem -CAkey int.key -CAcreateserial -days 90 \
            -extfile "$name.ext" -out "$name.pem" 2>/dev/null
        cat "$name.pem" int.pem >"$name.chain.pem"
    }
    for i in $(seq 0 19); do leaf "ecdsa$i" -newkey ec -pkeyopt ec_paramgen_curve:P-256; done
    for i in $(seq 0 4); do leaf "rsa$i" -newkey rsa:2048; done
    openssl verify -CAfile root.pem -untrusted int.pem ecdsa0.pem rsa0.pem >/dev/null
)

# --- nginx: 1,000 TLS server blocks on every other port -------------------------------
# Server i: every 10th (i % 10 == 9) an RSA leaf, the others ECDSA; i % 4 < 2 TLS 1.3 only,
# else TLS 1.2 only.
NG="$WORK/nginx"
mkdir -p "$NG/logs" "$NG/tmp"
MANIFEST="$WORK/manifest"
: >"$MANIFEST"
{
    cat <<EOF
worker_processes 2;
worker_rlimit_nofile 16384;
pid $NGINX_PID_FILE;
error_log $NG/logs/error.log error;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $NG/tmp/body;
    proxy_temp_path $NG/tmp/proxy;
    fastcgi_temp_path $NG/tmp/fastcgi;
    uwsgi_temp_path $NG/tmp/uwsgi;
    scgi_temp_path $NG/tmp/scgi;
    ssl_session_cache off;
    ssl_session_tickets off;
EOF
    for i in $(seq 0 $((TLS_COUNT - 1))); do
        port=$((PORT_BASE + 2 * i))
        if [ $((i % 10)) = 9 ]; then name="rsa$(((i / 10) % 5))"; else name="ecdsa$((i % 20))"; fi
        if [ $((i % 4)) -lt 2 ]; then proto=TLSv1.3; else proto=TLSv1.2; fi
        echo "    server { listen 127.0.0.1:$port ssl; ssl_protocols $proto;" \
            "ssl_certificate $PKI/$name.chain.pem; ssl_certificate_key $PKI/$name.key; return 204; }"
        echo "$port $PKI/$name.pem" >>"$MANIFEST"
    done
    echo "}"
} >"$NG/nginx.conf"
nginx -p "$NG" -c "$NG/nginx.conf" -e "$NG/logs/error.log" -t -q || die "nginx -t failed"
nginx -p "$NG" -c "$NG/nginx.conf" -e "$NG/logs/error.log"
for _ in $(seq 100); do
    listening=$(ss -Hltn "( sport >= :$PORT_BASE and sport <= :$PORT_LAST )" | wc -l)
    [ "$listening" = "$TLS_COUNT" ] && break
    sleep 0.1
done
[ "$listening" = "$TLS_COUNT" ] || die "nginx listens on $listening port(s), expected $TLS_COUNT"
[ "$(pgrep -P "$(cat "$NGINX_PID_FILE")" | wc -l)" = 2 ] || die "nginx does not have two workers"
served=$(openssl s_client -connect "127.0.0.1:$PORT_BASE" -showcerts </dev/null 2>/dev/null |
    grep -c 'BEGIN CERTIFICATE' || true)
[ "$served" = 2 ] || die "nginx serves $served certificate(s) on $PORT_BASE, expected 2"

echo "== certkeeper discovery scan benchmark: 127.0.0.1 ports $PORTS ($TLS_COUNT TLS, $TLS_COUNT closed)"
echo "   $(nproc) CPU(s), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); client and server share them"
echo "   certkeeper $("$BIN" --version | cut -d' ' -f2) ($BIN, built $(date -u -r "$BIN" '+%F %T UTC');" \
    "checkout now at $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- crates Cargo.toml Cargo.lock || echo ' with uncommitted changes'))"
echo "   $(nmap --version | head -1), $(nginx -v 2>&1 | cut -d' ' -f3) (2 workers), $(openssl version | cut -d' ' -f1-2)"
# Other work on the machine skews everything: say how busy it was just before the runs
# (with WAIT_IDLE=SECONDS, first wait up to that long for it to be idle).
cpu_busy() { # percent of all CPUs busy over the next second
    python3 -c '
import time
def sample():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(v), v[3] + v[4]
t0, i0 = sample(); time.sleep(1); t1, i1 = sample()
print(round(100 * (1 - (i1 - i0) / max(1, t1 - t0))))'
}
busy=$(cpu_busy)
waited=0
while [ "$busy" -gt 10 ] && [ "$waited" -lt "${WAIT_IDLE:-0}" ]; do
    sleep 4
    waited=$((waited + 5))
    busy=$(cpu_busy)
done
echo "   CPU busy before the runs: $busy%$([ "$busy" -le 10 ] || echo '  WARNING: something else is running; figures will be low')"
echo "   TLS ports: 900 ECDSA P-256 + 100 RSA-2048 leaves, chain = leaf + intermediate; 500 TLS 1.3 only, 500 TLS 1.2 only"

# --- certkeeper -------------------------------------------------------------------------
AGENT="$WORK/agent"
mkdir -p "$AGENT"
"$BIN" agent discover --config-dir "$AGENT" --ips 127.0.0.1 --ports "$PORTS" >"$WORK/discover.out" 2>&1 ||
    { cat "$WORK/discover.out" >&2; die "certkeeper agent discover failed"; }

# CPU seconds used so far by the nginx workers (the server side of every handshake).
CLK_TCK=$(getconf CLK_TCK)
nginx_cpu() {
    local ticks=0 pid
    for pid in $(pgrep -P "$(cat "$NGINX_PID_FILE")"); do
        ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    python3 -c "print($ticks / $CLK_TCK)"
}

# ck_run LABEL CONCURRENCY: one scan, checked; sets WALL USER SYS SRV (nginx CPU s).
ck_run() {
    local label=$1 conc=$2
    local out="$WORK/ck-$label.json" err="$WORK/ck-$label.err" res="$WORK/ck-$label.time"
    local srv0
    srv0=$(nginx_cpu)
    python3 "$HERE/timed.py" "$res" "$out" "$err" -- \
        "$BIN" agent scan --config-dir "$AGENT" --no-push --output json --concurrency "$conc" \
        ${CONNECT_TIMEOUT_MS:+--connect-timeout-ms "$CONNECT_TIMEOUT_MS"} \
        ${HANDSHAKE_TIMEOUT_MS:+--handshake-timeout-ms "$HANDSHAKE_TIMEOUT_MS"}
    local code
    read -r WALL USER SYS code <"$res"
    SRV=$(python3 -c "print(round($(nginx_cpu) - $srv0, 2))")
    if [ "$code" != 0 ]; then
        sed 's/^/  | /' "$err" | head -20 >&2
        die "certkeeper scan (concurrency $conc) exited with $code"
    fi
    if ! python3 "$HERE/scan_check.py" certkeeper "$out" "$MANIFEST" "$PKI/int.pem" >"$WORK/ck-$label.check"; then
        cat "$WORK/ck-$label.check" >&2
        die "certkeeper (concurrency $conc) did not find the expected $TLS_COUNT complete chains"
    fi
}

# nmap_run LABEL: one nmap scan, checked; sets WALL USER SYS SRV.
nmap_run() {
    local label=$1 srv0 code
    srv0=$(nginx_cpu)
    # shellcheck disable=SC2086
    python3 "$HERE/timed.py" "$WORK/nmap-$label.time" "$WORK/nmap-$label.xml" "$WORK/nmap-$label.err" -- \
        nmap -Pn -n -p "$PORTS" --script ssl-cert $NMAP_ARGS -oX - 127.0.0.1
    read -r WALL USER SYS code <"$WORK/nmap-$label.time"
    SRV=$(python3 -c "print(round($(nginx_cpu) - $srv0, 2))")
    [ "$code" = 0 ] || { sed 's/^/  | /' "$WORK/nmap-$label.err" | head -20 >&2; die "nmap exited with $code"; }
    if ! python3 "$HERE/scan_check.py" nmap "$WORK/nmap-$label.xml" "$MANIFEST" >"$WORK/nmap-$label.check"; then
        cat "$WORK/nmap-$label.check" >&2
        die "nmap did not find the expected $TLS_COUNT certificates"
    fi
}

# median ROWS...: the row ("wall user sys srv") with the median wall time.
median() { printf '%s\n' "$@" | sort -n | sed -n "$((($# + 1) / 2))p"; }
# row_fmt LABEL WALL USER SYS SRV
row_fmt() {
    python3 -c "
label, wall, user, sys_, srv = '$1', $2, $3, $4, $5
print(f'   {label:<19} {wall:8.3f} {$TLS_COUNT / wall:10.0f} {(user + sys_) * 1000 / $TLS_COUNT:14.3f} {srv:13.2f}')"
}

ck_run warmup 256 # page cache, first-run effects; not counted
# Rounds, each with every concurrency and one nmap run, so that a burst of other work on
# the machine hits all of them alike; the median of the rounds is reported.
declare -A CK_ROWS
NMAP_ROWS=()
for r in $(seq "$REPEAT"); do
    for conc in $CONCURRENCIES; do
        ck_run "c$conc-r$r" "$conc"
        CK_ROWS[$conc]+="$WALL $USER $SYS $SRV"$'\n'
    done
    nmap_run "r$r"
    NMAP_ROWS+=("$WALL $USER $SYS $SRV")
done

echo
echo "-- median of $REPEAT rounds; CPU s are per 1,000 TLS handshakes (each run: 1,000 TLS + 1,000 closed ports)"
printf '   %-19s %8s %10s %14s %13s\n' "" "wall s" "certs/s" "client CPU s" "nginx CPU s"
best_conc="" best_row=""
for conc in $CONCURRENCIES; do
    mapfile -t rows < <(printf '%s' "${CK_ROWS[$conc]}")
    row=$(median "${rows[@]}")
    # shellcheck disable=SC2086
    row_fmt "certkeeper -c $conc" $row
    if [ -z "$best_row" ] || python3 -c "import sys; sys.exit(0 if ${row%% *} < ${best_row%% *} else 1)"; then
        best_conc=$conc best_row=$row
    fi
done
nmap_row=$(median "${NMAP_ROWS[@]}")
# shellcheck disable=SC2086
row_fmt "nmap ssl-cert" $nmap_row
echo "   nmap runs (wall s): $(printf '%s\n' "${NMAP_ROWS[@]}" | awk '{printf "%.3f ", $1}');" \
    "certkeeper -c $best_conc runs: $(printf '%s' "${CK_ROWS[$best_conc]}" | awk '{printf "%.3f ", $1}')"
echo
sed 's/^  //; s/^/   /' "$WORK/ck-c$best_conc-r1.check"
sed 's/^  //; s/^/   /' "$WORK/nmap-r1.check"

# --- summary ------------------------------------------------------------------------------
# shellcheck disable=SC2086
python3 - "$best_conc" $best_row $nmap_row "$TLS_COUNT" <<'EOF'
import sys
conc = sys.argv[1]
ck_wall, ck_user, ck_sys, _, nm_wall, nm_user, nm_sys, _, n = map(float, sys.argv[2:])
ck_cpu, nm_cpu = (ck_user + ck_sys) * 1000 / n, (nm_user + nm_sys) * 1000 / n
ratio, rate = nm_wall / ck_wall, n / ck_wall
print()
print(f"== same findings in every run: both tools found the expected leaf on the same {n:.0f} TLS ports;")
print(f"   certkeeper captured leaf + intermediate on all {n:.0f}")
print(f"   certkeeper (concurrency {conc}): {ck_wall:6.3f} s wall, {rate:5.0f} complete chains/s, "
      f"{ck_cpu:.3f} client CPU s per 1,000 handshakes")
print(f"   nmap --script ssl-cert:  {' ' * len(conc)} {nm_wall:6.3f} s wall, {n / nm_wall:5.0f} certificates/s,    "
      f"{nm_cpu:.3f} client CPU s per 1,000 handshakes")
print(f"   nmap / certkeeper: {ratio:.1f}x wall (target >= 10x: {'met' if ratio >= 10 else 'NOT met'}), "
      f"{nm_cpu / ck_cpu:.1f}x client CPU; >= 1,000 complete chains/s: {'met' if rate >= 1000 else 'NOT met'}")
EOF
