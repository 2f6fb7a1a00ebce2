#!/usr/bin/env python3
"""Check the findings of the discovery scan benchmark (bench/scan.sh).

  scan_check.py certkeeper RESULT.json MANIFEST INTERMEDIATE.pem
  scan_check.py nmap RESULT.xml MANIFEST

MANIFEST has one line per TLS port: "PORT LEAF.pem". Every other scanned port is closed.
Exits 1 (after saying why) unless the tool found a certificate on exactly the manifest's
ports, and that certificate is the expected leaf; for certkeeper, every chain must also be
complete: [leaf, intermediate], byte for byte.
"""
import base64
import collections
import json
import ssl
import sys
import xml.etree.ElementTree as ET


def der_of(pem_path: str) -> bytes:
    with open(pem_path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def load_manifest(path: str) -> dict[int, bytes]:
    expected = {}
    with open(path) as f:
        for line in f:
            port, pem = line.split()
            expected[int(port)] = der_of(pem)
    return expected


def compare(tool: str, found: dict[int, bytes], expected: dict[int, bytes]) -> list[str]:
    problems = []
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = sorted(p for p in set(found) & set(expected) if found[p] != expected[p])
    if missing:
        problems.append(f"{tool}: no certificate on {len(missing)} TLS port(s), e.g. {missing[:10]}")
    if extra:
        problems.append(f"{tool}: a certificate on {len(extra)} closed port(s), e.g. {extra[:10]}")
    if wrong:
        problems.append(f"{tool}: the wrong leaf on {len(wrong)} port(s), e.g. {wrong[:10]}")
    return problems


def check_certkeeper(result: str, manifest: str, intermediate: str) -> int:
    expected = load_manifest(manifest)
    inter = der_of(intermediate)
    with open(result) as f:
        doc = json.load(f)
    problems = []
    leaves, chain_lengths, complete = {}, collections.Counter(), 0
    failures_listed = collections.Counter()
    examples = collections.defaultdict(list)
    protocols = collections.Counter()
    for o in doc.get("observations") or []:
        port, outcome = o["port"], o["outcome"]
        if o["ip"] != "127.0.0.1":
            problems.append(f"certkeeper: unexpected address {o['ip']}")
        if outcome["status"] == "tls":
            chain = [base64.b64decode(c) for c in outcome["chain"]]
            chain_lengths[len(chain)] += 1
            protocols[outcome.get("protocol", "?")] += 1
            if port in leaves:
                problems.append(f"certkeeper: port {port} reported twice")
            leaves[port] = chain[0] if chain else b""
            if len(chain) == 2 and chain[1] == inter:
                complete += 1
            else:
                examples["incomplete"].append(port)
        else:
            kind = outcome.get("kind", "?")
            failures_listed[kind] += 1
            if len(examples[kind]) < 3:
                examples[kind].append(f"{port}: {outcome.get('message', '')}")
    problems += compare("certkeeper", leaves, expected)
    incomplete = len(leaves) - complete
    if incomplete:
        problems.append(
            f"certkeeper: {incomplete} chain(s) are not [leaf, intermediate], e.g. ports "
            f"{examples['incomplete'][:10]}; chain lengths {dict(chain_lengths)}"
        )
    if doc.get("tls_found") != len(expected):
        problems.append(f"certkeeper: tls_found = {doc.get('tls_found')}, expected {len(expected)}")
    print(
        f"  certkeeper: endpoints_tried {doc.get('endpoints_tried')}, tls_found {doc.get('tls_found')}, "
        f"complete chains {complete}, failures {json.dumps(doc.get('failures'), sort_keys=True)}, "
        f"protocols {dict(sorted(protocols.items()))}"
    )
    for kind, ex in examples.items():
        if kind != "incomplete":
            print(f"    {kind} ({failures_listed[kind]} listed), e.g. {ex}")
    for p in problems:
        print(f"  FAIL {p}")
    return 1 if problems else 0


def check_nmap(result: str, manifest: str) -> int:
    expected = load_manifest(manifest)
    root = ET.parse(result).getroot()
    leaves, states = {}, collections.Counter()
    for port in root.iter("port"):
        number = int(port.get("portid"))
        state = port.find("state")
        states[state.get("state") if state is not None else "?"] += 1
        for script in port.findall("script"):
            if script.get("id") != "ssl-cert":
                continue
            pem = next((e.text for e in script.iter("elem") if e.get("key") == "pem"), None)
            if pem:
                leaves[number] = ssl.PEM_cert_to_DER_cert(pem)
    # Ports nmap lists only in <extraports> (e.g. "1000 closed") are not in states.
    for extra in root.iter("extraports"):
        states[extra.get("state")] += int(extra.get("count"))
    problems = compare("nmap", leaves, expected)
    print(f"  nmap: ports by state {dict(states)}, ssl-cert printed a certificate on {len(leaves)}")
    for p in problems:
        print(f"  FAIL {p}")
    return 1 if problems else 0


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "certkeeper":
        return check_certkeeper(*sys.argv[2:])
    if len(sys.argv) == 4 and sys.argv[1] == "nmap":
        return check_nmap(*sys.argv[2:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
