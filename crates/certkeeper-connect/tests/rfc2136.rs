//! RFC 2136 updates signed with TSIG, against a real BIND9 (`named`) on loopback.

use std::time::Duration;

use certkeeper_connect::rfc2136::{self, Rfc2136Config, Rfc2136Error, TsigAlgorithm};
use certkeeper_testkit::bind::Bind;

const SECRET: &str = "q0Dxm5oCkPOqD9lsD8lYmEI3kUxRHvM8CBgVhJTc2vI=";

fn config(bind: &Bind, key_name: &str, secret_b64: &str) -> Rfc2136Config {
    Rfc2136Config {
        server: bind.addr,
        zone: bind.zone.clone(),
        key_name: key_name.into(),
        algorithm: TsigAlgorithm::HmacSha256,
        secret: rfc2136::read_secret(secret_b64).unwrap(),
        ttl: 60,
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn publishes_and_removes_txt_records_and_reports_a_wrong_key() {
    let bind = Bind::start("upd.test", "certkeeper-key", SECRET)
        .expect("named (Debian package bind9) must be installed; .ci/run installs it");
    let cfg = config(&bind, "certkeeper-key", SECRET);
    let name = "_acme-challenge.www.upd.test.";
    rfc2136::publish(&cfg, name, "first-value").await.unwrap();
    rfc2136::publish(&cfg, name, "second-value").await.unwrap();
    let seen = bind.dig(name, "TXT").unwrap();
    assert!(
        seen.contains("\"first-value\"") && seen.contains("\"second-value\""),
        "{seen}"
    );
    // Removing one value leaves the other (two orders for one name may overlap).
    rfc2136::remove(&cfg, name, "first-value").await.unwrap();
    assert_eq!(bind.dig(name, "TXT").unwrap(), "\"second-value\"");
    rfc2136::remove(&cfg, name, "second-value").await.unwrap();
    assert_eq!(bind.dig(name, "TXT").unwrap(), "");

    // A wrong secret: BIND answers NOTAUTH with BADSIG, and nothing is published.
    let wrong = config(
        &bind,
        "certkeeper-key",
        "d3Jvbmcgc2VjcmV0IGZvciB0aGUga2V5IQ==",
    );
    let e = rfc2136::publish(&wrong, name, "bad").await.unwrap_err();
    assert!(
        matches!(&e, Rfc2136Error::Tsig { reason, .. } if reason.contains("BADSIG")),
        "{e}"
    );
    assert!(e.to_string().contains("certkeeper-key."), "{e}");
    assert!(!e.to_string().contains(SECRET), "no secret in messages");
    // A key BIND does not know: BADKEY.
    let unknown = config(&bind, "other-key", SECRET);
    let e = rfc2136::publish(&unknown, name, "bad").await.unwrap_err();
    assert!(
        matches!(&e, Rfc2136Error::Tsig { reason, .. } if reason.contains("BADKEY")),
        "{e}"
    );
    assert_eq!(bind.dig(name, "TXT").unwrap(), "");

    // The key may change TXT records only (update-policy); a name outside the zone is
    // refused before anything is sent.
    let e = rfc2136::publish(&cfg, "_acme-challenge.elsewhere.test.", "v")
        .await
        .unwrap_err();
    assert!(matches!(e, Rfc2136Error::Config(_)), "{e}");

    // A zone this server does not hold: BIND answers NOTAUTH, signed, which is not a
    // TSIG failure.
    let mut other = cfg.clone();
    other.zone = "not-here.test".into();
    let e = rfc2136::publish(&other, "_acme-challenge.www.not-here.test.", "v")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Rfc2136Error::Refused { rcode, .. } if rcode.contains("NOTAUTH")),
        "{e}"
    );

    // Nothing listening: a network error naming the server.
    let mut gone = cfg.clone();
    gone.server = format!("127.0.0.1:{}", certkeeper_testkit::free_port().unwrap())
        .parse()
        .unwrap();
    let e = rfc2136::publish(&gone, name, "v").await.unwrap_err();
    assert!(matches!(e, Rfc2136Error::Network { .. }), "{e}");
}
