#!/usr/bin/env bash
# Discovery scan benchmark: certkeeper against `nmap --script ssl-cert` on the same 2,000
# loopback ports, 1,000 of which serve TLS (a private nginx, two workers) and 1,000 closed.
#
#   bench/scan.sh            # as root (installs nginx-light, nmap, time if missing)
#
# Environment:
#   PORT_BASE=20000          first port; TLS on PORT_BASE+2i, nothing on PORT_BASE+2i+1 (i < 1000)
#   CONCURRENCIES="64 128 256 512 1024"   certkeeper --concurrency values tried
#   REPEAT=3                 certkeeper runs per concurrency (the median is reported)
#   NMAP_ARGS=""             extra nmap arguments (e.g. -T4); the default is the plain command
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
if [ ! -x "$BIN" ]; then
    echo "building $BIN"
    (cd "$ROOT" && cargo build --release -p certkeeper)
fi

# Two workers and 1,000 listening sockets each, plus up to ~1,000 client sockets.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -ge 4096 ] || die "ulimit -n is $(ulimit -n); 4096 or more is needed"

read -r eph_lo eph_hi </proc/sys/net/ipv4/ip_local_port_range
if [ "$PORT_BASE" -le "$eph_hi" ] && [ "$PORT_LAST" -ge "$eph_lo" ]; then
    die "ports $PORTS overlap the ephemeral range $eph_lo-$eph_hi; set PORT_BASE"
fi
busy=$(ss -Htan "( sport >= :$PORT_BASE and sport <= :$PORT_LAST )" | wc -l)
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
    "tree $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- crates Cargo.toml Cargo.lock || echo ' with uncommitted changes'))"
echo "   $(nmap --version | head -1), $(nginx -v 2>&1 | cut -d' ' -f3) (2 workers), $(openssl version | cut -d' ' -f1-2)"
echo "   TLS ports: 900 ECDSA P-256 + 100 RSA-2048 leaves, chain = leaf + intermediate; 500 TLS 1.3 only, 500 TLS 1.2 only"

# --- certkeeper -------------------------------------------------------------------------
AGENT="$WORK/agent"
mkdir -p "$AGENT"
"$BIN" agent discover --config-dir "$AGENT" --ips 127.0.0.1 --ports "$PORTS" >/dev/null

# ck_run LABEL CONCURRENCY: one scan, checked; sets WALL USER SYS.
ck_run() {
    local label=$1 conc=$2
    local out="$WORK/ck-$label.json" err="$WORK/ck-$label.err" res="$WORK/ck-$label.time"
    python3 "$HERE/timed.py" "$res" "$out" "$err" -- \
        "$BIN" agent scan --config-dir "$AGENT" --no-push --output json --concurrency "$conc" \
        ${CONNECT_TIMEOUT_MS:+--connect-timeout-ms "$CONNECT_TIMEOUT_MS"} \
        ${HANDSHAKE_TIMEOUT_MS:+--handshake-timeout-ms "$HANDSHAKE_TIMEOUT_MS"}
    local code
    read -r WALL USER SYS code <"$res"
    if [ "$code" != 0 ]; then
        sed 's/^/  | /' "$err" | head -20 >&2
        die "certkeeper scan (concurrency $conc) exited with $code"
    fi
    if ! python3 "$HERE/scan_check.py" certkeeper "$out" "$MANIFEST" "$PKI/int.pem" >"$WORK/ck-$label.check"; then
        cat "$WORK/ck-$label.check" >&2
        die "certkeeper (concurrency $conc) did not find the expected $TLS_COUNT complete chains"
    fi
}

ck_run warmup 256 # page cache, first-run effects; not counted
echo
echo "-- certkeeper agent scan --no-push (median of $REPEAT runs per concurrency)"
printf '   %-11s %9s %14s %15s\n' concurrency "wall s" "chains/s" "CPU s/1000 TLS"
best_conc="" best_wall="" best_cpu=""
for conc in $CONCURRENCIES; do
    rows=()
    for r in $(seq "$REPEAT"); do
        ck_run "c$conc-r$r" "$conc"
        rows+=("$WALL $USER $SYS")
    done
    read -r WALL USER SYS < <(printf '%s\n' "${rows[@]}" | sort -n | sed -n "$(((REPEAT + 1) / 2))p")
    cpu=$(python3 -c "print(f'{($USER + $SYS) * 1000 / $TLS_COUNT:.3f}')")
    printf '   %-11s %9.3f %14.0f %15s\n' "$conc" "$WALL" "$(python3 -c "print($TLS_COUNT / $WALL)")" "$cpu"
    if [ -z "$best_wall" ] || python3 -c "import sys; sys.exit(0 if $WALL < $best_wall else 1)"; then
        best_conc=$conc best_wall=$WALL best_cpu=$cpu
        cp "$WORK/ck-c$conc-r1.check" "$WORK/ck-best.check"
    fi
done
sed 's/^  //' "$WORK/ck-best.check" | sed 's/^/   /'

# --- nmap ---------------------------------------------------------------------------------
echo
echo "-- nmap -Pn -n -p $PORTS --script ssl-cert ${NMAP_ARGS:+$NMAP_ARGS }127.0.0.1"
# shellcheck disable=SC2086
python3 "$HERE/timed.py" "$WORK/nmap.time" "$WORK/nmap.xml" "$WORK/nmap.err" -- \
    nmap -Pn -n -p "$PORTS" --script ssl-cert $NMAP_ARGS -oX - 127.0.0.1
read -r NMAP_WALL NMAP_USER NMAP_SYS code <"$WORK/nmap.time"
[ "$code" = 0 ] || { cat "$WORK/nmap.err" >&2; die "nmap exited with $code"; }
if ! python3 "$HERE/scan_check.py" nmap "$WORK/nmap.xml" "$MANIFEST" >"$WORK/nmap.check"; then
    cat "$WORK/nmap.check" >&2
    die "nmap did not find the expected $TLS_COUNT certificates"
fi
sed 's/^  //' "$WORK/nmap.check" | sed 's/^/   /'
NMAP_CPU=$(python3 -c "print(f'{($NMAP_USER + $NMAP_SYS) * 1000 / $TLS_COUNT:.3f}')")

# --- summary ------------------------------------------------------------------------------
python3 - "$best_conc" "$best_wall" "$best_cpu" "$NMAP_WALL" "$NMAP_CPU" "$TLS_COUNT" <<'EOF'
import sys
conc, ck_wall, ck_cpu, nm_wall, nm_cpu, n = sys.argv[1:]
ck_wall, ck_cpu, nm_wall, nm_cpu, n = float(ck_wall), float(ck_cpu), float(nm_wall), float(nm_cpu), int(n)
ratio, rate = nm_wall / ck_wall, n / ck_wall
print()
print(f"== same findings: both tools found the expected leaf on the same {n} TLS ports; "
      f"certkeeper captured leaf + intermediate on all {n}")
print(f"   certkeeper (concurrency {conc}): {ck_wall:8.3f} s wall, {rate:7.0f} complete chains/s, "
      f"{ck_cpu:.3f} CPU s per 1,000 handshakes")
print(f"   nmap ssl-cert:             {nm_wall:8.3f} s wall, {n / nm_wall:7.0f} certificates/s,    "
      f"{nm_cpu:.3f} CPU s per 1,000 handshakes")
print(f"   ratio nmap / certkeeper:   {ratio:.1f}x  (target >= 10x: {'met' if ratio >= 10 else 'NOT met'}); "
      f"chains/s target >= 1,000: {'met' if rate >= 1000 else 'NOT met'}")
EOF
