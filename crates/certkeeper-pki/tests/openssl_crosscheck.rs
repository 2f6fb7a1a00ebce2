//! Every field the server derives from DER, cross-checked against `openssl x509` on
//! certificates OpenSSL itself made (with AIA, CRL distribution points and key ids).

use std::process::Command;

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn hex_of(colons: &str) -> String {
    colons.trim().replace(':', "").to_lowercase()
}

#[test]
fn parsed_fields_match_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    for (key_args, bits, curve) in [
        (
            vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
            384,
            Some("P-384"),
        ),
        (vec!["-newkey", "rsa:3072"], 3072, None),
    ] {
        let mut args = vec!["req", "-x509", "-nodes", "-keyout"];
        let (k, c) = (d("k.pem"), d("c.pem"));
        args.push(&k);
        args.extend(key_args.iter().copied());
        args.extend([
            "-out", &c, "-days", "30", "-subj", "/C=DE/O=Example GmbH/CN=ext.example.com",
            "-addext", "subjectAltName=DNS:ext.example.com,DNS:*.ext.example.com,IP:192.0.2.5",
            "-addext", "authorityInfoAccess=OCSP;URI:http://ocsp.example.com,caIssuers;URI:http://ca.example.com/ca.crt",
            "-addext", "crlDistributionPoints=URI:http://crl.example.com/ca.crl",
            "-addext", "basicConstraints=critical,CA:FALSE",
        ]);
        openssl(&args);
        let der_path = d("c.der");
        openssl(&["x509", "-in", &c, "-outform", "DER", "-out", &der_path]);
        let der = std::fs::read(&der_path).unwrap();
        let f = certkeeper_pki::parse_der(&der).unwrap();
        let text = openssl(&["x509", "-in", &c, "-noout", "-text"]);
        let after = |marker: &str| -> String {
            let mut lines = text.lines();
            lines.find(|l| l.contains(marker)).unwrap();
            lines.next().unwrap().trim().to_string()
        };

        assert_eq!(
            f.sha256.to_string(),
            hex_of(
                openssl(&["x509", "-in", &c, "-noout", "-fingerprint", "-sha256"])
                    .split('=')
                    .nth(1)
                    .unwrap()
            )
        );
        assert_eq!(
            f.sha1,
            hex_of(
                openssl(&["x509", "-in", &c, "-noout", "-fingerprint", "-sha1"])
                    .split('=')
                    .nth(1)
                    .unwrap()
            )
        );
        let serial = openssl(&["x509", "-in", &c, "-noout", "-serial"])
            .trim()
            .trim_start_matches("serial=")
            .to_lowercase();
        assert_eq!(f.serial.as_str(), serial.trim_start_matches("00"));
        let subject = openssl(&[
            "x509", "-in", &c, "-noout", "-subject", "-nameopt", "RFC2253",
        ]);
        // OpenSSL's RFC 2253 form lists the RDNs in reverse order.
        let mut rdns: Vec<&str> = subject
            .trim()
            .trim_start_matches("subject=")
            .split(',')
            .collect();
        rdns.reverse();
        assert_eq!(f.subject.replace(", ", ","), rdns.join(","));
        assert_eq!(f.common_name.as_deref(), Some("ext.example.com"));
        assert_eq!(
            f.sans,
            ["ext.example.com", "*.ext.example.com", "192.0.2.5"]
        );
        assert_eq!(f.ocsp_urls, ["http://ocsp.example.com"]);
        assert_eq!(f.ca_issuer_urls, ["http://ca.example.com/ca.crt"]);
        assert_eq!(f.crl_urls, ["http://crl.example.com/ca.crl"]);
        assert_eq!(
            f.subject_key_id.as_deref(),
            Some(hex_of(&after("Subject Key Identifier")).as_str())
        );
        assert_eq!(
            f.authority_key_id.as_deref(),
            Some(hex_of(after("Authority Key Identifier").trim_start_matches("keyid:")).as_str())
        );
        assert_eq!(f.key.bits, Some(bits));
        assert_eq!(f.key.curve.as_deref(), curve);
        let sig = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Signature Algorithm: "))
            .unwrap();
        assert_eq!(f.signature_algorithm, sig);
        assert!(f.self_signed && !f.is_ca);
        let end = openssl(&[
            "x509", "-in", &c, "-noout", "-enddate", "-dateopt", "iso_8601",
        ]);
        assert_eq!(
            f.not_after
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap(),
            end.trim().trim_start_matches("notAfter=").replace(' ', "T")
        );
    }
}

#[test]
fn undecodable_input_is_an_error_not_a_panic() {
    for bad in [
        &b""[..],
        b"\x30",
        b"\x30\x82\xff\xff",
        b"not der at all",
        &[0x30, 0x03, 0x02, 0x01, 0x01],
    ] {
        assert!(certkeeper_pki::parse_der(bad).is_err(), "{bad:?}");
    }
}

/// What a CA-issuers URL may return, each made by `openssl`: DER, PEM, and a
/// certs-only PKCS#7 in DER (`.p7c`) and PEM; anything else is `aia_unreadable`.
#[test]
fn fetched_issuer_certificates_in_every_format() {
    use certkeeper_pki::import::{ImportError, fetched_certificates};
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    openssl(&[
        "req",
        "-x509",
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-keyout",
        &d("k.pem"),
        "-out",
        &d("ca.pem"),
        "-days",
        "30",
        "-subj",
        "/CN=Fetched CA",
    ]);
    openssl(&[
        "x509",
        "-in",
        &d("ca.pem"),
        "-outform",
        "DER",
        "-out",
        &d("ca.der"),
    ]);
    openssl(&[
        "crl2pkcs7",
        "-nocrl",
        "-certfile",
        &d("ca.pem"),
        "-outform",
        "DER",
        "-out",
        &d("ca.p7c"),
    ]);
    openssl(&[
        "crl2pkcs7",
        "-nocrl",
        "-certfile",
        &d("ca.pem"),
        "-out",
        &d("ca.p7b"),
    ]);
    let der = std::fs::read(d("ca.der")).unwrap();
    for f in ["ca.der", "ca.pem", "ca.p7c", "ca.p7b"] {
        let body = std::fs::read(d(f)).unwrap();
        assert_eq!(
            fetched_certificates(&body, f).unwrap(),
            vec![der.clone()],
            "{f}"
        );
    }
    for garbage in [&b"<html>not found</html>"[..], b"", &der[..der.len() / 2]] {
        assert_eq!(
            fetched_certificates(garbage, "http://ca.example/x").unwrap_err(),
            ImportError::FetchedUnreadable("http://ca.example/x".into())
        );
    }
    assert_eq!(
        ImportError::FetchedUnreadable(String::new()).code(),
        "aia_unreadable"
    );
}
