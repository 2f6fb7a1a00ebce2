#!/usr/bin/env python3
"""Normalise and compare the findings of the vulnerability-scan benchmark (bench/vulnscan.sh).

  vulnscan_check.py report RUN_DIR EXPECTED.json

RUN_DIR holds fixtures.tsv ("NAME<TAB>PORT"), root.pem, and for every fixture NAME:
  ck-NAME.json / sy-NAME.json / nm-NAME.xml    certkeeper / sslyze / nmap output
  ck-NAME.time / sy-NAME.time / nm-NAME.time   "wall user sys exit" (bench/timed.py)
  ck-NAME.conn / sy-NAME.conn / nm-NAME.conn   TCP connections opened (SYNs seen on lo)
and for the all-at-once run ck-all.*, sy-all.*, nm-all.* (same files, every endpoint).

Each tool's output is turned into certkeeper's finding kinds (FindingKind::as_str in
crates/certkeeper-core/src/findings.rs) by the same rules certkeeper uses (suite classes
from the IANA names, DH below 2048 bits, SSLv3 with CBC is POODLE, ...). A peer tool is
only judged on the kinds it tests at all; a known answer it misses, or a finding it
reports that is not a known answer, is printed as that tool being wrong.

Exits 1 if certkeeper got any known answer wrong (or failed to scan), 0 otherwise; the
speed and connection targets are reported, not enforced.
"""
import datetime
import json
import sys
import xml.etree.ElementTree as ET

PROTO_KIND = {
    "SSLv2": "protocol_ssl2",
    "SSLv3": "protocol_ssl3",
    "TLSv1.0": "protocol_tls10",
    "TLSv1.1": "protocol_tls11",
}
ALL_PROTOCOLS = ["SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
CIPHER_KINDS = {
    "cipher_null", "cipher_anonymous", "cipher_export", "cipher_des", "cipher_3des",
    "cipher_rc4", "cipher_md5_mac", "cipher_cbc_legacy", "cipher_static_rsa",
}
CERT_KINDS = {
    "cert_expired", "cert_not_yet_valid", "cert_expiring_soon", "cert_self_signed",
    "cert_untrusted", "chain_incomplete", "chain_misordered", "hostname_mismatch",
    "weak_signature", "weak_key", "validity_too_long",
}
# What each peer tool tests at all (with the commands bench/vulnscan.sh runs).
SSLYZE_TESTS = (
    set(PROTO_KIND.values()) | {"no_tls12", "no_tls13"} | CIPHER_KINDS | {
        "weak_dh_params", "poodle", "no_fallback_scsv", "no_secure_renegotiation",
        "client_renegotiation", "tls_compression", "heartbleed", "ccs_injection", "robot",
        "cert_expired", "cert_not_yet_valid", "cert_untrusted", "chain_incomplete",
        "chain_misordered", "hostname_mismatch", "weak_signature", "weak_key",
    }
)
# ssl-enum-ciphers does not try SSLv2; nmap's scripts judge no certificate, fallback
# SCSV, renegotiation or ROBOT.
NMAP_TESTS = (
    {"protocol_ssl3", "protocol_tls10", "protocol_tls11", "no_tls12", "no_tls13"} | CIPHER_KINDS
    | {"weak_dh_params", "poodle", "tls_compression", "heartbleed", "ccs_injection"}
)


def suite_weaknesses(iana: str, protocol: str) -> set[str]:
    """The same rules as certkeeper_core::findings::suite_weaknesses."""
    n = iana.upper()
    if n.startswith("SSL_CK_"):  # SSLv2 names
        n = "TLS_RSA_WITH_" + n[len("SSL_CK_"):].replace("_WITH_", "_")
    if "_WITH_" in n:
        kx, cipher = n.split("_WITH_", 1)
    else:
        kx, cipher = "", n.removeprefix("TLS_")
    out = set()
    if cipher.startswith("NULL") or n == "TLS_NULL_WITH_NULL_NULL":
        out.add("cipher_null")
    if "_ANON" in kx:
        out.add("cipher_anonymous")
    if "EXPORT" in n:
        out.add("cipher_export")
    if cipher.startswith("DES_") or cipher.startswith("DES40_"):
        out.add("cipher_des")
    if "3DES" in cipher:
        out.add("cipher_3des")
    if cipher.startswith("RC4"):
        out.add("cipher_rc4")
    if cipher.endswith("_MD5"):
        out.add("cipher_md5_mac")
    if "_CBC" in cipher and protocol in ("SSLv3", "TLSv1.0"):
        out.add("cipher_cbc_legacy")
    if kx in ("TLS_RSA", "TLS_RSA_EXPORT", "SSL_RSA", "TLS_RSA_PSK"):
        out.add("cipher_static_rsa")
    return out


def protocol_kinds(suites_by_proto: dict[str, list[str]]) -> set[str]:
    """Protocol, suite and POODLE findings from {protocol: [accepted IANA names]}."""
    out = set()
    offered = {p for p, s in suites_by_proto.items() if s}
    for p in offered:
        if p in PROTO_KIND:
            out.add(PROTO_KIND[p])
        for s in suites_by_proto[p]:
            out |= suite_weaknesses(s, p)
    if offered and "TLSv1.2" not in offered:
        out.add("no_tls12")
    if offered and "TLSv1.3" not in offered:
        out.add("no_tls13")
    if any("_CBC" in s.upper() for s in suites_by_proto.get("SSLv3", [])):
        out.add("poodle")
    return out


# --- certkeeper ---------------------------------------------------------------------------
def certkeeper_results(path: str) -> dict[int, dict]:
    """{port: {"kinds", "error", "connections"}} from `agent vulnscan --output json`."""
    try:
        doc = json.load(open(path))
    except (OSError, ValueError) as e:
        return {"_error": str(e)}
    out = {}
    for e in doc.get("endpoints", []):
        facts = e.get("facts") or {}
        out[e["port"]] = {
            "kinds": {f["kind"] for f in e.get("findings", [])},
            "error": e.get("error"),
            "connections": facts.get("connections"),
        }
    return out


# --- sslyze -------------------------------------------------------------------------------
SSLYZE_PROTO = {
    "ssl_2_0_cipher_suites": "SSLv2", "ssl_3_0_cipher_suites": "SSLv3",
    "tls_1_0_cipher_suites": "TLSv1.0", "tls_1_1_cipher_suites": "TLSv1.1",
    "tls_1_2_cipher_suites": "TLSv1.2", "tls_1_3_cipher_suites": "TLSv1.3",
}


def sslyze_results(path: str, ca_file: str) -> dict[int, dict]:
    try:
        doc = json.load(open(path))
    except (OSError, ValueError) as e:
        return {"_error": str(e)}
    out = {}
    for r in doc.get("server_scan_results", []):
        port = r["server_location"]["port"]
        if r.get("connectivity_status") != "COMPLETED":
            err = r.get("connectivity_error_trace") or r.get("connectivity_status")
            lines = [x for x in str(err).strip().splitlines() if x.strip()]
            out[port] = {"kinds": set(), "error": lines[-1] if lines else "could not connect"}
            continue
        sr = r["scan_result"]
        kinds, errors = set(), []

        def res(cmd):
            a = sr.get(cmd) or {}
            if a.get("status") != "COMPLETED":
                if a.get("status") not in (None, "NOT_SCHEDULED"):
                    errors.append(f"{cmd}: {a.get('error_reason')}")
                return None
            return a["result"]

        suites, dh_bits = {}, []
        for cmd, proto in SSLYZE_PROTO.items():
            x = res(cmd)
            if x is None:
                continue
            suites[proto] = [s["cipher_suite"]["name"] for s in x["accepted_cipher_suites"]]
            for s in x["accepted_cipher_suites"]:
                k = s.get("ephemeral_key") or {}
                if k.get("type_name") == "DH" and k.get("size"):
                    dh_bits.append(k["size"])
        kinds |= protocol_kinds(suites)
        if dh_bits and min(dh_bits) < 2048:
            kinds.add("weak_dh_params")
        x = res("tls_compression")
        if x and x["supports_compression"]:
            kinds.add("tls_compression")
        x = res("heartbleed")
        if x and x["is_vulnerable_to_heartbleed"]:
            kinds.add("heartbleed")
        x = res("openssl_ccs_injection")
        if x and x["is_vulnerable_to_ccs_injection"]:
            kinds.add("ccs_injection")
        x = res("tls_fallback_scsv")
        # certkeeper only judges the fallback when there is a lower version to fall back to.
        if x and not x["supports_fallback_scsv"] and sum(1 for s in suites.values() if s) > 1:
            kinds.add("no_fallback_scsv")
        x = res("session_renegotiation")
        if x:
            if not x["supports_secure_renegotiation"]:
                kinds.add("no_secure_renegotiation")
            if x["is_vulnerable_to_client_renegotiation_dos"]:
                kinds.add("client_renegotiation")
        x = res("robot")
        if x and x["robot_result"].startswith("VULNERABLE"):
            kinds.add("robot")
        x = res("certificate_info")
        if x:
            kinds |= sslyze_cert_kinds(x, ca_file)
        out[port] = {"kinds": kinds, "error": "; ".join(errors) or None}
    return out


def sslyze_cert_kinds(x: dict, ca_file: str) -> set[str]:
    kinds = set()
    for d in x.get("certificate_deployments", [])[:1]:
        chain = d["received_certificate_chain"]
        leaf = chain[0] if chain else None
        if d.get("leaf_certificate_subject_matches_hostname") is False:
            kinds.add("hostname_mismatch")
        if d.get("received_chain_has_valid_order") is False:
            kinds.add("chain_misordered")
        ours = [v for v in d.get("path_validation_results", [])
                if v["trust_store"]["path"].endswith(ca_file.split("/")[-1])]
        for v in ours:
            if v.get("verified_certificate_chain") is None:
                err = (v.get("validation_error") or "").lower()
                if "issuer" in err and len(chain) == 1:
                    kinds.add("chain_incomplete")
                elif "expired" in err:
                    pass  # from the dates below
                else:
                    kinds.add("cert_untrusted")
        if leaf:
            now = datetime.datetime.now(datetime.timezone.utc)
            nb = datetime.datetime.fromisoformat(leaf["not_valid_before"].replace("Z", "+00:00"))
            na = datetime.datetime.fromisoformat(leaf["not_valid_after"].replace("Z", "+00:00"))
            if na.tzinfo is None:
                na, nb = na.replace(tzinfo=datetime.timezone.utc), nb.replace(tzinfo=datetime.timezone.utc)
            if na < now:
                kinds.add("cert_expired")
            if nb > now:
                kinds.add("cert_not_yet_valid")
            alg = ((leaf.get("signature_hash_algorithm") or {}).get("name") or "").lower()
            if alg in ("sha1", "md5"):
                kinds.add("weak_signature")
            pk = leaf.get("public_key") or {}
            if pk.get("algorithm") == "_RSAPublicKey" or "rsa" in str(pk.get("algorithm", "")).lower():
                if (pk.get("key_size") or 4096) < 2048:
                    kinds.add("weak_key")
    return kinds


# --- nmap ---------------------------------------------------------------------------------
def nmap_results(path: str) -> dict[int, dict]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        return {"_error": str(e)}
    out = {}
    for port in root.iter("port"):
        p = int(port.get("portid"))
        kinds, suites, dh_bits = set(), {}, []
        scripts = {s.get("id"): s for s in port.findall("script")}
        enum = scripts.get("ssl-enum-ciphers")
        if enum is not None:
            for t in enum.findall("table"):
                proto = t.get("key")
                names = []
                for c in t.findall("table[@key='ciphers']/table"):
                    e = {x.get("key"): x.text for x in c.findall("elem")}
                    names.append(e.get("name", ""))
                    kx = (e.get("kex_info") or "").split()
                    if len(kx) == 2 and kx[0] == "dh" and kx[1].isdigit():
                        dh_bits.append(int(kx[1]))
                suites[proto] = names
                comp = [x.text for x in t.findall("table[@key='compressors']/elem")]
                if any(c and c != "NULL" for c in comp):
                    kinds.add("tls_compression")
        kinds |= protocol_kinds(suites)
        if "poodle" in kinds:
            kinds.discard("poodle")  # judged by ssl-poodle below, not derived
        if dh_bits and min(dh_bits) < 2048:
            kinds.add("weak_dh_params")
        for sid, s in scripts.items():
            for t in s.iter("table"):
                e = {x.get("key"): x.text for x in t.findall("elem")}
                if "VULNERABLE" not in (e.get("state") or ""):
                    continue
                title = (e.get("title") or "").lower()
                if sid == "ssl-heartbleed":
                    kinds.add("heartbleed")
                elif sid == "ssl-ccs-injection":
                    kinds.add("ccs_injection")
                elif sid == "ssl-poodle":
                    kinds.add("poodle")
                elif sid == "ssl-dh-params":
                    if "anonymous" in title:
                        kinds.add("cipher_anonymous")
                    else:
                        kinds.add("weak_dh_params")
        state = port.find("state")
        err = None
        if state is not None and state.get("state") != "open":
            err = f"port {state.get('state')}"
        elif enum is None:
            err = "ssl-enum-ciphers found no TLS"
        out[p] = {"kinds": kinds, "error": err}
    return out


def targets_text(bad: list[str]) -> str:
    notes = [b for b in bad if b.startswith("(")]
    misses = [b for b in bad if not b.startswith("(")]
    return ("NOT met: " + ", ".join(misses) if misses else "met") + "".join(" " + n for n in notes)


def sy_failed(res: dict) -> bool:
    return bool(res.get("error")) and "ConnectionToServerFailed" in res["error"] or res.get("error") == "no result"


# --- report -------------------------------------------------------------------------------
def read_time(path: str):
    try:
        wall, user, sys_, code = open(path).read().split()
        return float(wall), float(user) + float(sys_), int(code)
    except (OSError, ValueError):
        return None, None, None


class Count(int):
    """SYNs seen; `dropped` > 0 means tcpdump lost packets and the count is a lower bound."""
    dropped = 0

    def __str__(self):
        return f"{int(self)}" + (f" (>=; tcpdump dropped {self.dropped})" if self.dropped else "")

    def __format__(self, spec):
        return format(str(self), spec)


def read_conn(path: str):
    try:
        syns, dropped = (open(path).read().split() + ["0"])[:2]
        c = Count(int(syns))
        c.dropped = int(dropped)
        return c
    except (OSError, ValueError):
        return None


def fmt(kinds) -> str:
    return ", ".join(sorted(kinds)) or "(none)"


def judge(found: set, known: set, tested: set):
    """(missed, extra) of a peer tool, on the kinds it tests."""
    return sorted((known & tested) - found), sorted(found - known)


def report(run: str, expected_path: str) -> int:
    expected = {k: v for k, v in json.load(open(expected_path)).items() if not k.startswith("_")}
    fixtures = [line.split("\t") for line in open(f"{run}/fixtures.tsv").read().splitlines()]
    fixtures = [(n, int(p)) for n, p in fixtures]
    ca = f"{run}/root.pem"
    ok_all, rows, ratios = True, [], []
    per_ck, per_sy, per_nm = {}, {}, {}
    print("-- per endpoint (one run of each tool, one endpoint at a time)")
    for name, port in fixtures:
        want = set(expected[name]["kinds"])
        cls = expected[name]["class"]
        ck = certkeeper_results(f"{run}/ck-{name}.json").get(port, {"kinds": set(), "error": "no result"})
        sy = sslyze_results(f"{run}/sy-{name}.json", ca).get(port, {"kinds": set(), "error": "no result"})
        nm = nmap_results(f"{run}/nm-{name}.xml").get(port, {"kinds": set(), "error": "no result"})
        per_ck[name], per_sy[name], per_nm[name] = ck["kinds"], sy["kinds"], nm["kinds"]
        t = {tool: read_time(f"{run}/{tool}-{name}.time") for tool in ("ck", "sy", "nm")}
        c = {tool: read_conn(f"{run}/{tool}-{name}.conn") for tool in ("ck", "sy", "nm")}
        hit = ck["kinds"] & want
        precision = len(hit) / len(ck["kinds"]) if ck["kinds"] else (1.0 if not want else 0.0)
        recall = len(hit) / len(want) if want else 1.0
        right = ck["kinds"] == want and not ck["error"]
        ok_all &= right
        limit = 100 if cls == "modern" else 200
        print(f"\n   {name} (127.0.0.1:{port}, {cls})")
        print(f"     known answer: {fmt(want)}")
        for tool, label, res in (("ck", "certkeeper", ck), ("sy", "sslyze", sy), ("nm", "nmap", nm)):
            wall, cpu, code = t[tool]
            conns = c[tool]
            extra = ""
            if tool == "ck":
                self_count = ck.get("connections")
                extra = f" (its own count: {self_count})" if self_count is not None else ""
            wall_s = f"{wall:7.2f} s" if wall is not None else "      ? s"
            print(f"     {label:<10} {wall_s} wall, {cpu or 0:5.2f} s CPU, "
                  f"{conns if conns is not None else '?':>4} connections{extra}, exit {code}")
            if res.get("error"):
                print(f"       error: {res['error'][:200]}")
            print(f"       findings: {fmt(res['kinds'])}")
            if tool == "ck":
                verdict = "right" if right else "WRONG"
                print(f"       precision {precision:.2f}, recall {recall:.2f}: {verdict}"
                      + ("" if right else f" (missed: {fmt(want - ck['kinds'])}; not known: {fmt(ck['kinds'] - want)})"))
            else:
                tested = SSLYZE_TESTS if tool == "sy" else NMAP_TESTS
                missed, wrong = judge(res["kinds"], want, tested)
                caveat = expected[name].get("peer_caveats", {}).get(label)
                diff = "; ".join(x for x in (missed and f"misses {fmt(missed)}",
                                             wrong and f"reports {fmt(wrong)}, which the endpoint does not have") if x)
                if diff and caveat:
                    print(f"       {label} {diff}; but {caveat}")
                elif diff:
                    print(f"       {label} is WRONG here: {diff}")
                else:
                    print(f"       {label} right on the kinds it tests")
        ck_wall, sy_wall, nm_wall = t["ck"][0], t["sy"][0], t["nm"][0]
        # A tool that could not scan the endpoint at all has no time to compare.
        r_sy = sy_wall / ck_wall if ck_wall and sy_wall and not sy_failed(sy) else None
        r_nm = nm_wall / ck_wall if ck_wall and nm_wall and not nm.get("error") else None
        ratios.append((name, r_sy, r_nm, c["ck"], limit, right, ck_wall, sy_wall, nm_wall, c["sy"], c["nm"]))

    print("\n-- certkeeper against the others, per endpoint (wall time ratio; > 1: certkeeper faster)")
    print(f"   {'endpoint':<22} {'ck s':>6} {'sslyze s':>9} {'nmap s':>7} {'sslyze/ck':>10} {'nmap/ck':>8}"
          f" {'ck conns':>9} {'sslyze':>7} {'nmap':>6}  targets")
    met = {"speed_sslyze": True, "speed_nmap": True, "conns": True, "answers": ok_all}
    for name, r_sy, r_nm, conns, limit, right, ckw, syw, nmw, sy_c, nm_c in ratios:
        bad = []
        if r_sy is None:
            bad.append("(sslyze could not scan it: no ratio)")
        elif r_sy < 5:
            bad.append("< 5x sslyze")
            met["speed_sslyze"] = False
        if r_nm is None:
            bad.append("(nmap could not scan it: no ratio)")
        elif r_nm <= 1:
            bad.append("not faster than nmap")
            met["speed_nmap"] = False
        if conns is None or conns > limit:
            bad.append(f"> {limit} connections")
            met["conns"] = False
        if not right:
            bad.append("findings wrong")

        def f(x, w=6, d=2):
            return f"{x:{w}.{d}f}" if x is not None else " " * (w - 1) + "?"
        print(f"   {name:<22} {f(ckw)} {f(syw, 9)} {f(nmw, 7)} {f(r_sy, 9, 1)}x {f(r_nm, 7, 1)}x"
              f" {conns if conns is not None else '?':>9} {sy_c if sy_c is not None else '?':>7}"
              f" {nm_c if nm_c is not None else '?':>6}  {targets_text(bad)}")

    # All endpoints at once.
    print("\n-- all endpoints at once (one invocation of each tool)")
    ck_all = certkeeper_results(f"{run}/ck-all.json")
    sy_all = sslyze_results(f"{run}/sy-all.json", ca)
    nm_all = nmap_results(f"{run}/nm-all.xml")
    same = all(ck_all.get(p, {}).get("kinds") == per_ck[n] for n, p in fixtures)
    right_all = all(ck_all.get(p, {}).get("kinds") == set(expected[n]["kinds"])
                    and not ck_all.get(p, {}).get("error") for n, p in fixtures)
    ok_all &= right_all
    for tool, label in (("ck", "certkeeper"), ("sy", "sslyze"), ("nm", "nmap")):
        wall, cpu, code = read_time(f"{run}/{tool}-all.time")
        conns = read_conn(f"{run}/{tool}-all.conn")
        note = ""
        if tool == "ck":
            note = (f"; findings {'the same as' if same else 'DIFFERENT from'} the one-at-a-time runs, "
                    f"{'every known answer right' if right_all else 'NOT every known answer right'}")
            for n, p in fixtures:
                got = ck_all.get(p, {})
                want = set(expected[n]["kinds"])
                if got.get("kinds") != want or got.get("error"):
                    note += (f"\n       {n}: missed {fmt(want - got.get('kinds', set()))}, not known "
                             f"{fmt(got.get('kinds', set()) - want)}{', error ' + got['error'] if got.get('error') else ''}")
        else:
            one = per_sy if tool == "sy" else per_nm
            everything = sy_all if tool == "sy" else nm_all
            differ = [n for n, p in fixtures if everything.get(p, {}).get("kinds") != one[n]]
            note = "; findings " + (f"DIFFERENT from its one-at-a-time runs on {', '.join(differ)}" if differ
                                    else "the same as its one-at-a-time runs")
        if wall is None:
            print(f"   {label:<10} not run")
        else:
            print(f"   {label:<10} {wall:7.2f} s wall, {cpu:6.2f} s CPU, {conns} connections, exit {code}{note}")
    w = {tool: read_time(f"{run}/{tool}-all.time")[0] for tool in ("ck", "sy", "nm")}
    if w["ck"]:
        print(f"   sslyze/certkeeper {w['sy'] / w['ck']:.1f}x, nmap/certkeeper {w['nm'] / w['ck']:.1f}x" if w["sy"] and w["nm"] else "")

    print("\n== targets (issue 3):")
    print(f"   certkeeper >= 5x faster than sslyze on every endpoint it scans: {'met' if met['speed_sslyze'] else 'NOT met'}")
    print(f"   certkeeper faster than nmap on every endpoint:         {'met' if met['speed_nmap'] else 'NOT met'}")
    print(f"   <= 100 connections (modern), <= 200 (legacy):           {'met' if met['conns'] else 'NOT met'}")
    print(f"   every known answer right (also all at once):           {'met' if ok_all else 'NOT met'}")
    return 0 if ok_all else 1


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "report":
        return report(sys.argv[2], sys.argv[3])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
