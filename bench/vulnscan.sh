#!/usr/bin/env bash
# Vulnerability-scan benchmark (issue 3): certkeeper `agent vulnscan` against sslyze (PyPI)
# and nmap's TLS scripts (Debian) on a fixture set with known answers, all on loopback.
#
#   bench/vulnscan.sh        # as root (network namespace for gnutls-serv, tcpdump on lo)
#
# Fixtures (crates/certkeeper-testkit/src/bin/vuln-fixtures.rs): five openssl s_server
# configurations, gnutls-serv in a network namespace of its own behind a socat bridge, and
# the testkit's OpenSSL-1.0.1-like flawed peer (patched, Heartbleed, CCS injection,
# compression). Known answers: bench/vulnscan_expected.json.
#
# For every endpoint, one tool at a time: wall time, CPU time, TCP connections opened and
# the findings of each tool in certkeeper's kind names (bench/vulnscan_check.py); then all
# endpoints in one invocation of each tool. Connections are counted the same way for every
# tool: a tcpdump capture on lo of the SYNs (SYN set, ACK clear) sent to the endpoint's port
# while the tool runs; certkeeper's own count is printed beside it.
#
# Environment:
#   SSLYZE_VENV=DIR   venv with sslyze (default target/bench-venv; created with pip if missing)
#   BIN_DIR=DIR       where certkeeper and vuln-fixtures are (default target/release; when
#                     set, nothing is built)
#   KEEP=1            keep the temporary directory (fixtures, raw outputs, captures)
#   WAIT_IDLE=SECONDS wait up to that long for the machine to be idle before the runs
#
# Exits 1 if certkeeper gets a known answer wrong; the speed and connection targets are
# reported ("met" / "NOT met"), not enforced.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
KEEP=${KEEP:-0}
BIN_DIR=${BIN_DIR:-$ROOT/target/release}
BIN="$BIN_DIR/certkeeper"
FIXTURES_BIN="$BIN_DIR/vuln-fixtures"
VENV=${SSLYZE_VENV:-$ROOT/target/bench-venv}
SSLYZE="$VENV/bin/sslyze"
NMAP_SCRIPTS=ssl-enum-ciphers,ssl-heartbleed,ssl-ccs-injection,ssl-poodle,ssl-dh-params,ssl-cert
# The sslyze commands that test what certkeeper tests (not early data, HTTP headers,
# session resumption, EMS, curves or the Mozilla-profile check).
SSLYZE_CMDS=(--sslv2 --sslv3 --tlsv1 --tlsv1_1 --tlsv1_2 --tlsv1_3 --heartbleed --openssl_ccs
    --compression --fallback --reneg --robot --certinfo)
unset CERTKEEPER_TIMEOUT_MS CERTKEEPER_PER_HOST_CONNECTIONS CERTKEEPER_CONCURRENCY \
    CERTKEEPER_RATE CERTKEEPER_CA_FILES CERTKEEPER_NO_SYSTEM_ROOTS CERTKEEPER_IP \
    CERTKEEPER_OUTPUT CERTKEEPER_FAIL_ON CERTKEEPER_CONFIG_DIR

die() { echo "bench/vulnscan.sh: $*" >&2; exit 1; }

# --- prerequisites --------------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "run as root (gnutls-serv runs in a network namespace; tcpdump on lo)"
missing=()
command -v nmap >/dev/null || missing+=(nmap)
command -v tcpdump >/dev/null || missing+=(tcpdump)
command -v gnutls-serv >/dev/null || missing+=(gnutls-bin)
command -v socat >/dev/null || missing+=(socat)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    apt-get install -y -o DPkg::Post-Invoke::= "${missing[@]}" >/dev/null ||
        { apt-get update >/dev/null && apt-get install -y -o DPkg::Post-Invoke::= "${missing[@]}" >/dev/null; }
fi
for t in openssl python3 unshare ip; do command -v "$t" >/dev/null || die "$t is needed"; done
if [ ! -x "$SSLYZE" ]; then
    echo "installing sslyze into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q sslyze
fi
# Always (a no-op when up to date): a stale binary would measure old code.
[ "$BIN_DIR" != "$ROOT/target/release" ] ||
    (cd "$ROOT" && cargo build --release -p certkeeper -p certkeeper-testkit --bin certkeeper --bin vuln-fixtures)

# --- temporary directory, fixtures and cleanup ----------------------------------------
WORK=$(mktemp -d /tmp/certkeeper-bench-vulnscan.XXXXXX)
FIXTURES_PID=""
CAPTURE_PID=""
cleanup() {
    local code=$?
    [ -z "$CAPTURE_PID" ] || kill -INT "$CAPTURE_PID" 2>/dev/null || true
    if [ -n "$FIXTURES_PID" ]; then
        kill -TERM "$FIXTURES_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$FIXTURES_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$FIXTURES_PID" 2>/dev/null || true
    fi
    if [ "$KEEP" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$FIXTURES_BIN" "$WORK" >"$WORK/fixtures.log" 2>&1 &
FIXTURES_PID=$!
for _ in $(seq 300); do
    [ -s "$WORK/fixtures.tsv" ] && break
    kill -0 "$FIXTURES_PID" 2>/dev/null || { cat "$WORK/fixtures.log" >&2; die "the fixtures did not start"; }
    sleep 0.1
done
[ -s "$WORK/fixtures.tsv" ] || die "the fixtures did not start within 30 s"
mapfile -t NAMES < <(cut -f1 "$WORK/fixtures.tsv")
declare -A PORT
while IFS=$'\t' read -r n p; do PORT[$n]=$p; done <"$WORK/fixtures.tsv"
for n in "${NAMES[@]}"; do
    python3 -c "import json,sys; sys.exit(0 if sys.argv[1] in json.load(open(sys.argv[2])) else 1)" \
        "$n" "$HERE/vulnscan_expected.json" || die "no known answer for fixture $n"
done

echo "== certkeeper vulnerability-scan benchmark: ${#NAMES[@]} fixture endpoints on 127.0.0.1"
echo "   $(nproc) CPU(s), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); clients and servers share them"
echo "   certkeeper $("$BIN" --version | cut -d' ' -f2) ($BIN, built $(date -u -r "$BIN" '+%F %T UTC');" \
    "checkout now at $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- crates Cargo.toml Cargo.lock || echo ' with uncommitted changes'))"
echo "   sslyze $("$VENV/bin/pip" show sslyze 2>/dev/null | sed -n 's/^Version: //p') (nassl $("$VENV/bin/pip" show nassl 2>/dev/null | sed -n 's/^Version: //p')), $(nmap --version | head -1 | cut -d' ' -f1-3)," \
    "$(openssl version | cut -d' ' -f1-2), $(gnutls-serv --version | head -1)"
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
echo "   CPU busy before the runs: $busy%$([ "$busy" -le 10 ] || echo '  WARNING: something else is running; times will be high')"
echo "   certkeeper: agent vulnscan www.test:PORT --ip 127.0.0.1 --output json --ca-file root.pem --no-system-roots"
echo "   sslyze:     sslyze --mozilla_config disable ${SSLYZE_CMDS[*]} --certinfo_ca_file root.pem 'www.test:PORT{127.0.0.1}'"
echo "   nmap:       nmap -Pn -n -p PORT --script $NMAP_SCRIPTS 127.0.0.1"

# --- connection counting: SYNs to the endpoint ports on lo ----------------------------
# capture_start FILE PORT...: start tcpdump and wait until it listens.
capture_start() {
    local file=$1; shift
    local filter="" p
    for p in "$@"; do filter+="${filter:+ or }dst port $p"; done
    # A large buffer and short snapshots: on a busy machine tcpdump is scheduled late.
    tcpdump -i lo -nn -U --immediate-mode -B 32768 -s 96 -w "$file" \
        "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn and dst host 127.0.0.1 and ($filter)" \
        2>"$file.err" &
    CAPTURE_PID=$!
    for _ in $(seq 100); do
        grep -q "listening on" "$file.err" 2>/dev/null && return 0
        sleep 0.05
    done
    die "tcpdump did not start: $(cat "$file.err")"
}
# capture_stop FILE OUT: stop the capture, write "SYNS DROPPED" to OUT (DROPPED: packets
# the kernel dropped before tcpdump read them; when not 0 the count is a lower bound).
capture_stop() {
    sleep 0.2
    kill -INT "$CAPTURE_PID"
    wait "$CAPTURE_PID" 2>/dev/null || true
    CAPTURE_PID=""
    local syns dropped
    syns=$(tcpdump -r "$1" -nn 2>/dev/null | wc -l)
    dropped=$(sed -n 's/^\([0-9]*\) packets dropped by kernel.*/\1/p' "$1.err")
    echo "$syns ${dropped:-0}" >"$2"
}

# run TOOL LABEL PORT... -- CMD...: one timed, counted run; raw output in $WORK/TOOL-LABEL.*
run() {
    local tool=$1 label=$2; shift 2
    local ports=()
    while [ "$1" != "--" ]; do ports+=("$1"); shift; done
    shift
    capture_start "$WORK/$tool-$label.pcap" "${ports[@]}"
    python3 "$HERE/timed.py" "$WORK/$tool-$label.time" "$WORK/$tool-$label.out" "$WORK/$tool-$label.err" -- "$@"
    capture_stop "$WORK/$tool-$label.pcap" "$WORK/$tool-$label.conn"
}
CK_ARGS=(--ip 127.0.0.1 --output json --ca-file "$WORK/root.pem" --no-system-roots)

# --- one endpoint at a time -----------------------------------------------------------
for n in "${NAMES[@]}"; do
    p=${PORT[$n]}
    run ck "$n" "$p" -- "$BIN" agent vulnscan "www.test:$p" "${CK_ARGS[@]}"
    cp "$WORK/ck-$n.out" "$WORK/ck-$n.json"
    run sy "$n" "$p" -- "$SSLYZE" --quiet --mozilla_config disable "${SSLYZE_CMDS[@]}" \
        --certinfo_ca_file "$WORK/root.pem" --json_out "$WORK/sy-$n.json" "www.test:$p{127.0.0.1}"
    run nm "$n" "$p" -- nmap -Pn -n -p "$p" --script "$NMAP_SCRIPTS" -oX "$WORK/nm-$n.xml" 127.0.0.1
    echo "   scanned $n"
done

# --- all endpoints at once ------------------------------------------------------------
ports=() endpoints=() targets=()
for n in "${NAMES[@]}"; do
    ports+=("${PORT[$n]}")
    endpoints+=("www.test:${PORT[$n]}")
    targets+=("www.test:${PORT[$n]}{127.0.0.1}")
done
run ck all "${ports[@]}" -- "$BIN" agent vulnscan "${endpoints[@]}" "${CK_ARGS[@]}"
cp "$WORK/ck-all.out" "$WORK/ck-all.json"
run sy all "${ports[@]}" -- "$SSLYZE" --quiet --mozilla_config disable "${SSLYZE_CMDS[@]}" \
    --certinfo_ca_file "$WORK/root.pem" --json_out "$WORK/sy-all.json" "${targets[@]}"
run nm all "${ports[@]}" -- nmap -Pn -n -p "$(IFS=,; echo "${ports[*]}")" --script "$NMAP_SCRIPTS" \
    -oX "$WORK/nm-all.xml" 127.0.0.1

echo
python3 "$HERE/vulnscan_check.py" report "$WORK" "$HERE/vulnscan_expected.json"
