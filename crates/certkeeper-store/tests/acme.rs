//! ACME state in the store, on SQLite always and PostgreSQL when configured: http-01
//! tokens of orders in flight, and the CA's renewal time (ARI) taking the place of
//! the two-thirds rule.

use certkeeper_store::{CertRequest, ParsedCert, Store, StoredKey};
use certkeeper_testkit::{KeyKind, LeafSpec, TestPki, db};
use time::{Duration, OffsetDateTime};

fn parsed(der: &[u8]) -> ParsedCert {
    ParsedCert {
        facts: certkeeper_pki::parse_der(der).unwrap(),
        der: der.to_vec(),
    }
}

/// An issued request of this server (ACME) for a certificate valid `days` from `from`.
async fn issued(store: &Store, pki: &TestPki, id: &str, from: i64, days: i64) {
    let leaf = pki
        .leaf(&LeafSpec::new(&format!("{id}.test"), KeyKind::EcdsaP256).valid_days(from, days))
        .unwrap();
    let cert = parsed(&leaf.der);
    let key = StoredKey {
        kek_id: "k".into(),
        wrapped_dek: vec![1],
        ciphertext: vec![2],
    };
    let spki = certkeeper_pki::cert_spki_sha256(&leaf.der).unwrap();
    store
        .create_request(
            &CertRequest {
                id: id.into(),
                common_name: format!("{id}.test"),
                sans: vec![format!("DNS:{id}.test")],
                key_type: "p256".into(),
                csr_pem: "-".into(),
                spki_sha256: spki,
                key: key.clone(),
                status: "pending".into(),
                certificate_sha256: None,
                created_at: OffsetDateTime::now_utc(),
                issued_by: None,
                team: None,
                renews_sha256: None,
                reuse_key: false,
            },
            "admin",
        )
        .await
        .unwrap();
    store
        .save_import(
            &[cert],
            false,
            Some(&key),
            Some(id),
            "acme",
            OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
    store.set_issued_by(id, "acme").await.unwrap();
}

#[tokio::test]
async fn ari_renewal_time_replaces_two_thirds_and_http01_tokens_expire() {
    let pki = TestPki::new().unwrap();
    for tdb in db::all().unwrap() {
        let store = Store::open(&tdb.url).await.unwrap();
        let now = OffsetDateTime::now_utc();
        // Both valid from yesterday for 90 days: two thirds through is day 59 from now.
        issued(&store, &pki, "ari", -1, 90).await;
        issued(&store, &pki, "plain", -1, 90).await;
        let early = now + Duration::days(10);
        store
            .set_acme_details("ari", "http-01", Some(early))
            .await
            .unwrap();
        store
            .set_acme_details("plain", "dns-01", None)
            .await
            .unwrap();
        let (c, at) = store.acme_details("ari").await.unwrap();
        assert_eq!(c.as_deref(), Some("http-01"), "{}", tdb.label);
        assert_eq!(at.map(|t| t.unix_timestamp()), Some(early.unix_timestamp()));
        assert!(store.acme_details("nope").await.is_err());

        let none = store
            .claim_due_renewals(now + Duration::days(9), 60, 10)
            .await
            .unwrap();
        assert!(
            none.is_empty(),
            "{}: nothing due before the CA's time",
            tdb.label
        );
        let due = store
            .claim_due_renewals(now + Duration::days(11), 60, 10)
            .await
            .unwrap();
        let ids: Vec<&str> = due.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["ari"], "{}: the CA's time, not two thirds", tdb.label);
        // A CA window later than two thirds is honoured too.
        store
            .set_acme_details("plain", "dns-01", Some(now + Duration::days(70)))
            .await
            .unwrap();
        let later = store
            .claim_due_renewals(now + Duration::days(65), 60, 10)
            .await
            .unwrap();
        assert!(
            later.iter().all(|r| r.id != "plain"),
            "{}: {later:?}",
            tdb.label
        );
        store
            .set_acme_details("plain", "dns-01", None)
            .await
            .unwrap();
        let later = store
            .claim_due_renewals(now + Duration::days(65), 60, 10)
            .await
            .unwrap();
        assert!(
            later.iter().any(|r| r.id == "plain"),
            "{}: without ARI, two thirds",
            tdb.label
        );

        // http-01 tokens: kept until withdrawn or expired.
        store
            .put_http01_token("tok-1", "tok-1.thumb", now + Duration::hours(1))
            .await
            .unwrap();
        store
            .put_http01_token("tok-2", "tok-2.thumb", now - Duration::seconds(5))
            .await
            .unwrap();
        assert_eq!(
            store.http01_token("tok-1", now).await.unwrap().as_deref(),
            Some("tok-1.thumb")
        );
        assert_eq!(store.http01_token("tok-2", now).await.unwrap(), None);
        assert_eq!(store.http01_token("tok-3", now).await.unwrap(), None);
        // Publishing the same token again replaces it.
        store
            .put_http01_token("tok-1", "tok-1.other", now + Duration::hours(1))
            .await
            .unwrap();
        assert_eq!(
            store.http01_token("tok-1", now).await.unwrap().as_deref(),
            Some("tok-1.other")
        );
        store.delete_http01_token("tok-1").await.unwrap();
        assert_eq!(store.http01_token("tok-1", now).await.unwrap(), None);
    }
}
