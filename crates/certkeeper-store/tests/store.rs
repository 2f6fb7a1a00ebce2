//! One storage suite, run against SQLite always and PostgreSQL when
//! `CERTKEEPER_TEST_POSTGRES_URL` is set.

use std::net::IpAddr;

use certkeeper_core::inventory::CertificateFilter;
use certkeeper_store::{
    NewAgent, ParsedCert, Principal, ReportMeta, Sighting, SightingResult, Store, StoreError,
};
use certkeeper_testkit::{KeyKind, LeafSpec, TestPki, db};
use time::{Duration, OffsetDateTime};

fn meta<'a>(agent_id: &'a str, report_id: &'a str, watched: u64) -> ReportMeta<'a> {
    ReportMeta {
        agent_id,
        report_id,
        watched_endpoints: watched,
        hostname: "scanner",
        agent_version: "0.1.0",
    }
}

fn parsed(der: &[u8]) -> ParsedCert {
    ParsedCert {
        facts: certkeeper_pki::parse_der(der).unwrap(),
        der: der.to_vec(),
    }
}

fn tls_sighting(host: &str, port: u16, chain: &[&[u8]], seen_at: OffsetDateTime) -> Sighting {
    Sighting {
        host: host.into(),
        ip: IpAddr::from([192, 0, 2, 10]),
        port,
        sni: Some(host.into()),
        seen_at,
        result: SightingResult::Tls {
            protocol: "TLSv1.3".into(),
            cipher: "TLS_AES_128_GCM_SHA256".into(),
            starttls: None,
            chain: chain.iter().map(|d| parsed(d)).collect(),
            note: None,
        },
    }
}

async fn with_agent(store: &Store, id: &str) {
    let now = OffsetDateTime::now_utc();
    let tok = format!("enroll-{id}");
    store
        .create_enrollment_token(&tok, now, now + Duration::hours(1), 1)
        .await
        .unwrap();
    store
        .enroll_agent(
            &tok,
            &NewAgent {
                id: id.into(),
                name: id.into(),
                hostname: "scanner".into(),
                version: "0.1.0".into(),
            },
            &format!("cred-{id}"),
            now,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn ingest_is_unique_by_sha256_and_endpoint_and_idempotent_by_report() {
    let pki = TestPki::new().unwrap();
    let a = pki
        .leaf(&LeafSpec::new("a.test", KeyKind::EcdsaP256))
        .unwrap();
    for tdb in db::all().unwrap() {
        let store = Store::open(&tdb.url).await.unwrap();
        with_agent(&store, "ag1").await;
        let now = OffsetDateTime::now_utc();
        let chain: [&[u8]; 2] = [&a.der, &pki.intermediate.der];
        let sightings = vec![
            tls_sighting("a.test", 443, &chain, now),
            tls_sighting("a.test", 8443, &chain, now),
        ];
        let s = store
            .ingest(&meta("ag1", "r1", 2), &sightings, now)
            .await
            .unwrap();
        assert_eq!(
            (s.new_certificates, s.new_endpoints, s.tls_endpoints),
            (2, 2, 2),
            "{}",
            tdb.label
        );
        let again = store
            .ingest(&meta("ag1", "r1", 2), &sightings, now)
            .await
            .unwrap();
        assert!(again.duplicate, "{}", tdb.label);
        let s2 = store
            .ingest(&meta("ag1", "r2", 2), &sightings, now)
            .await
            .unwrap();
        assert_eq!(
            (s2.new_certificates, s2.new_endpoints),
            (0, 0),
            "{}",
            tdb.label
        );
        let (certs, endpoints, history) = store.counts().await.unwrap();
        assert_eq!((certs, endpoints, history), (2, 2, 2), "{}", tdb.label);
        let leaf = parsed(&a.der).facts.sha256;
        let chain = store
            .endpoint_chain("a.test", "192.0.2.10", 443)
            .await
            .unwrap();
        assert_eq!(
            chain,
            vec![leaf, parsed(&pki.intermediate.der).facts.sha256]
        );
        let served = store.endpoints_serving(&[leaf]).await.unwrap();
        assert_eq!(served[&leaf].len(), 2);
        assert_eq!(served[&leaf][0].agent.as_deref(), Some("ag1"));
        let agents = store.list_agents().await.unwrap();
        assert_eq!(
            (agents[0].watched_endpoints, agents[0].endpoints_seen),
            (2, 2)
        );
        store.close().await;
    }
}

#[tokio::test]
async fn a_replaced_certificate_is_known_to_be_replaced() {
    let pki = TestPki::new().unwrap();
    let old = pki
        .leaf(&LeafSpec::new("r.test", KeyKind::EcdsaP256))
        .unwrap();
    let new = pki
        .leaf(&LeafSpec::new("r.test", KeyKind::EcdsaP256))
        .unwrap();
    for tdb in db::all().unwrap() {
        let store = Store::open(&tdb.url).await.unwrap();
        with_agent(&store, "ag1").await;
        let t0 = OffsetDateTime::now_utc() - Duration::days(2);
        let t1 = t0 + Duration::days(1);
        store
            .ingest(
                &meta("ag1", "r1", 1),
                &[tls_sighting("r.test", 443, &[&old.der], t0)],
                t0,
            )
            .await
            .unwrap();
        let s = store
            .ingest(
                &meta("ag1", "r2", 1),
                &[tls_sighting("r.test", 443, &[&new.der], t1)],
                t1,
            )
            .await
            .unwrap();
        assert_eq!(s.replaced, 1, "{}", tdb.label);
        // A late report from a spool, older than what we know, changes nothing current.
        let late = store
            .ingest(
                &meta("ag1", "r0", 1),
                &[tls_sighting(
                    "r.test",
                    443,
                    &[&old.der],
                    t0 - Duration::hours(1),
                )],
                t1,
            )
            .await
            .unwrap();
        assert_eq!(late.replaced, 0);
        let history = store
            .endpoint_history("r.test", "192.0.2.10", 443)
            .await
            .unwrap();
        assert_eq!(history.len(), 2, "{}", tdb.label);
        assert_eq!(history[0].sha256, parsed(&old.der).facts.sha256);
        assert_eq!(
            history[0].replaced_at.map(|t| t.unix_timestamp()),
            Some(t1.unix_timestamp())
        );
        assert_eq!(history[1].sha256, parsed(&new.der).facts.sha256);
        assert!(history[1].replaced_at.is_none());
        let old_where = store
            .served_history_of(&parsed(&old.der).facts.sha256)
            .await
            .unwrap();
        assert_eq!(old_where.len(), 1);
        assert!(old_where[0].2.replaced_at.is_some());
        store.close().await;
    }
}

#[tokio::test]
async fn listing_filters_and_pages_by_expiry() {
    let pki = TestPki::new().unwrap();
    let mut ders = Vec::new();
    for (i, days) in [(0, -10i64), (1, 5), (2, 20), (3, 45), (4, 200)] {
        let spec = LeafSpec::new(&format!("host{i}.example.com"), KeyKind::EcdsaP256)
            .valid_days(days - 90, 90);
        ders.push(pki.leaf(&spec).unwrap().der);
    }
    for tdb in db::all().unwrap() {
        let store = Store::open(&tdb.url).await.unwrap();
        with_agent(&store, "ag1").await;
        let now = OffsetDateTime::now_utc();
        let sightings: Vec<Sighting> = ders
            .iter()
            .enumerate()
            .map(|(i, d)| tls_sighting(&format!("host{i}.example.com"), 443, &[d], now))
            .collect();
        store
            .ingest(&meta("ag1", "r1", 5), &sightings, now)
            .await
            .unwrap();
        let within30 = CertificateFilter {
            not_after_before: Some(now + Duration::days(30)),
            ..Default::default()
        };
        let page = store.list_certificates(&within30, 100, None).await.unwrap();
        let names: Vec<_> = page
            .items
            .iter()
            .map(|c| c.facts.common_name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "host0.example.com",
                "host1.example.com",
                "host2.example.com"
            ],
            "{}",
            tdb.label
        );
        // Pages of two, following the cursor, visit every certificate once, in order.
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let p = store
                .list_certificates(&CertificateFilter::default(), 2, cursor.as_deref())
                .await
                .unwrap();
            seen.extend(p.items.iter().map(|c| c.facts.common_name.clone().unwrap()));
            match p.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen.len(), 5);
        assert_eq!(seen[4], "host4.example.com");
        let expired = CertificateFilter {
            expired: Some(true),
            now: Some(now),
            ..Default::default()
        };
        assert_eq!(
            store
                .list_certificates(&expired, 10, None)
                .await
                .unwrap()
                .items
                .len(),
            1
        );
        let q = CertificateFilter {
            query: Some("HOST3.EXAMPLE".into()),
            ..Default::default()
        };
        assert_eq!(
            store
                .list_certificates(&q, 10, None)
                .await
                .unwrap()
                .items
                .len(),
            1
        );
        let pct = CertificateFilter {
            query: Some("%".into()),
            ..Default::default()
        };
        assert_eq!(
            store
                .list_certificates(&pct, 10, None)
                .await
                .unwrap()
                .items
                .len(),
            0,
            "LIKE wildcards are escaped"
        );
        let issuer = CertificateFilter {
            issuer: Some("test intermediate".into()),
            ..Default::default()
        };
        assert_eq!(
            store
                .list_certificates(&issuer, 10, None)
                .await
                .unwrap()
                .items
                .len(),
            5
        );
        let serial = parsed(&ders[2]).facts.serial.to_string();
        let by_serial = CertificateFilter {
            serial: Some(serial),
            ..Default::default()
        };
        assert_eq!(
            store
                .list_certificates(&by_serial, 10, None)
                .await
                .unwrap()
                .items
                .len(),
            1
        );
        assert!(matches!(
            store
                .list_certificates(&CertificateFilter::default(), 10, Some("garbage"))
                .await,
            Err(StoreError::InvalidCursor)
        ));
        store.close().await;
    }
}

#[tokio::test]
async fn enrollment_tokens_and_revocation() {
    for tdb in db::all().unwrap() {
        let store = Store::open(&tdb.url).await.unwrap();
        let now = OffsetDateTime::now_utc();
        assert!(store.init_admin_token("adminhash", now).await.unwrap());
        assert!(
            !store.init_admin_token("otherhash", now).await.unwrap(),
            "only the first start creates one"
        );
        assert_eq!(
            store.principal("adminhash").await.unwrap(),
            Some(Principal::Admin)
        );
        assert_eq!(store.principal("otherhash").await.unwrap(), None);

        store
            .create_enrollment_token("e1", now, now + Duration::hours(1), 1)
            .await
            .unwrap();
        store
            .create_enrollment_token("old", now - Duration::hours(2), now - Duration::hours(1), 5)
            .await
            .unwrap();
        let agent = |id: &str| NewAgent {
            id: id.into(),
            name: id.into(),
            hostname: "h".into(),
            version: "v".into(),
        };
        store
            .enroll_agent("e1", &agent("a1"), "c1", now)
            .await
            .unwrap();
        assert!(matches!(
            store.enroll_agent("e1", &agent("a2"), "c2", now).await,
            Err(StoreError::EnrollmentRefused)
        ));
        assert!(matches!(
            store.enroll_agent("old", &agent("a3"), "c3", now).await,
            Err(StoreError::EnrollmentRefused)
        ));
        assert!(matches!(
            store.enroll_agent("nope", &agent("a4"), "c4", now).await,
            Err(StoreError::EnrollmentRefused)
        ));
        assert_eq!(
            store.principal("c1").await.unwrap(),
            Some(Principal::Agent { id: "a1".into() })
        );
        assert_eq!(
            store.principal("c2").await.unwrap(),
            None,
            "a refused enrollment leaves no credential"
        );
        store.revoke_agent("a1", now).await.unwrap();
        assert_eq!(store.principal("c1").await.unwrap(), None);
        assert!(matches!(
            store.revoke_agent("zz", now).await,
            Err(StoreError::NotFound)
        ));
        store.close().await;
    }
}

#[tokio::test]
async fn an_interrupted_ingest_leaves_all_or_nothing() {
    let pki = TestPki::new().unwrap();
    // Large enough that an early abort always lands before the commit, whatever the
    // machine: the earliest aborts must leave nothing, later ones all or nothing.
    let leaves: Vec<Vec<u8>> = (0..400)
        .map(|i| {
            pki.leaf(&LeafSpec::new(&format!("n{i}.test"), KeyKind::EcdsaP256))
                .unwrap()
                .der
        })
        .collect();
    for tdb in db::all().unwrap() {
        let store = Store::open(&tdb.url).await.unwrap();
        with_agent(&store, "ag1").await;
        let now = OffsetDateTime::now_utc();
        let sightings: Vec<Sighting> = leaves
            .iter()
            .enumerate()
            .map(|(i, d)| tls_sighting(&format!("n{i}.test"), 443, &[d], now))
            .collect();
        // Abort the ingest at increasing points; every outcome must be all or nothing.
        let mut saw_nothing = false;
        for delay_us in [0u64, 100, 500, 2000, 8000, 30000] {
            let s2 = store.clone();
            let sg = sightings.clone();
            let id = format!("r{delay_us}");
            let task =
                tokio::spawn(async move { s2.ingest(&meta("ag1", &id, 400), &sg, now).await });
            tokio::time::sleep(std::time::Duration::from_micros(delay_us)).await;
            task.abort();
            let _ = task.await;
            let (certs, endpoints, _) = store.counts().await.unwrap();
            assert!(
                (certs, endpoints) == (0, 0) || (certs, endpoints) == (400, 400),
                "{}: partial ingest {certs}/{endpoints} after {delay_us}us",
                tdb.label
            );
            saw_nothing |= certs == 0;
        }
        assert!(
            saw_nothing,
            "{}: the earliest abort should have stopped the ingest",
            tdb.label
        );
        store.close().await;
    }
}

#[tokio::test]
async fn two_servers_ingesting_the_same_certificates_at_once_keep_one_row_each() {
    let pki = TestPki::new().unwrap();
    let leaves: Vec<Vec<u8>> = (0..30)
        .map(|i| {
            pki.leaf(&LeafSpec::new(&format!("c{i}.test"), KeyKind::EcdsaP256))
                .unwrap()
                .der
        })
        .collect();
    for tdb in db::all().unwrap() {
        // Two independent pools on one database, as two server processes would have.
        let s1 = Store::open(&tdb.url).await.unwrap();
        let s2 = Store::open(&tdb.url).await.unwrap();
        with_agent(&s1, "ag1").await;
        with_agent(&s1, "ag2").await;
        let now = OffsetDateTime::now_utc();
        let mk = |rev: bool| {
            let mut v: Vec<Sighting> = leaves
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    tls_sighting(&format!("c{i}.test"), 443, &[d, &pki.intermediate.der], now)
                })
                .collect();
            if rev {
                v.reverse();
            }
            v
        };
        let mut tasks = Vec::new();
        for round in 0..4 {
            let (a, b) = (s1.clone(), s2.clone());
            let (x, y) = (mk(false), mk(true));
            tasks.push(tokio::spawn(async move {
                a.ingest(&meta("ag1", &format!("a{round}"), 30), &x, now)
                    .await
            }));
            tasks.push(tokio::spawn(async move {
                b.ingest(&meta("ag2", &format!("b{round}"), 30), &y, now)
                    .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let (certs, endpoints, history) = s1.counts().await.unwrap();
        assert_eq!((certs, endpoints, history), (31, 30, 30), "{}", tdb.label);
        s1.close().await;
        s2.close().await;
    }
}

#[tokio::test]
async fn scoped_tokens_are_listed_without_secrets_and_revoked_everywhere_at_once() {
    use certkeeper_core::access::{Permission, Permissions};
    use certkeeper_store::NewScopedToken;
    for tdb in db::all().unwrap() {
        // Two stores on one database: two replicas.
        let a = Store::open(&tdb.url).await.unwrap();
        let b = Store::open(&tdb.url).await.unwrap();
        let now = OffsetDateTime::now_utc();
        let perms = Permissions::parse_list("read,import").unwrap();
        let new = NewScopedToken {
            id: "t1",
            name: "ci-web",
            team: Some("web"),
            permissions: &perms,
            token_hash: "h1",
        };
        a.create_scoped_token(&new, "admin", now).await.unwrap();
        let same_name = NewScopedToken {
            id: "t2",
            token_hash: "h2",
            ..new.clone()
        };
        assert!(matches!(
            a.create_scoped_token(&same_name, "admin", now).await,
            Err(StoreError::Exists(_))
        ));
        let Some(Principal::Token(t)) = b.principal("h1").await.unwrap() else {
            panic!("a scoped token");
        };
        assert_eq!((t.id.as_str(), t.name.as_str()), ("t1", "ci-web"));
        assert_eq!(t.team.as_deref(), Some("web"));
        assert!(t.permissions.allows(Permission::Import));
        assert!(!t.permissions.allows(Permission::ExportKey));
        assert_eq!(b.principal("h2").await.unwrap(), None);
        let listed = a.scoped_tokens().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0], t);
        let revoked = a.revoke_scoped_token("t1", "admin", now).await.unwrap();
        assert_eq!(revoked.name, "ci-web");
        assert_eq!(
            b.principal("h1").await.unwrap(),
            None,
            "at once on the other"
        );
        assert!(matches!(
            b.revoke_scoped_token("t1", "admin", now).await,
            Err(StoreError::NotFound)
        ));
        assert!(a.scoped_tokens().await.unwrap().is_empty());
        let log = a.audit_log(10).await.unwrap();
        let actions: Vec<&str> = log.iter().map(|e| e.2.as_str()).collect();
        assert_eq!(actions, ["revoke_token", "create_token"]);
        assert_eq!(log[0].3, "t1 ci-web (team web)");
        assert!(
            log.iter().all(|e| !e.3.contains("h1")),
            "no hash in the log"
        );
        a.close().await;
        b.close().await;
    }
}

fn deployment(id: &str, agent: &str) -> certkeeper_store::NewDeployment {
    certkeeper_store::NewDeployment {
        id: id.into(),
        certificate_sha256: "ab".repeat(32),
        agent_id: agent.into(),
        cert_path: None,
        chain_path: None,
        fullchain_path: Some("/etc/tls/site.pem".into()),
        key_path: Some("/etc/tls/site.key".into()),
        owner: None,
        group: Some("www-data".into()),
        mode: 0o644,
        key_mode: 0o600,
        reload: vec!["systemctl".into(), "reload".into(), "nginx".into()],
        endpoint_host: "web.test".into(),
        endpoint_port: 443,
    }
}

#[tokio::test]
async fn jobs_are_claimed_by_their_agent_once_and_given_back_when_the_lease_ends() {
    use certkeeper_core::jobs::JobState;
    use certkeeper_store::JobOutcome;
    for tdb in db::all().unwrap() {
        let store = Store::open(&tdb.url).await.unwrap();
        // A second replica of the same database.
        let replica = Store::open(&tdb.url).await.unwrap();
        with_agent(&store, "a1").await;
        with_agent(&store, "a2").await;
        let t0 = OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap();
        store
            .create_deployment(&deployment("d1", "a1"), "j1", 3, t0)
            .await
            .unwrap();
        let d = store.deployment("d1").await.unwrap();
        assert_eq!(d.spec, deployment("d1", "a1"), "{}", tdb.label);
        assert_eq!((d.job.state, d.job.attempts), (JobState::Queued, 0));

        // Another agent sees nothing of it.
        assert!(
            store
                .claim_jobs("a2", "l0", t0, 60, 10)
                .await
                .unwrap()
                .is_empty()
        );
        // Two replicas claiming at once hand it out once.
        let (a, b) = tokio::join!(
            store.claim_jobs("a1", "la", t0, 60, 10),
            replica.claim_jobs("a1", "lb", t0, 60, 10)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.len() + b.len(), 1, "{}: {a:?} {b:?}", tdb.label);
        let first = a.into_iter().chain(b).next().unwrap();
        assert_eq!((first.job.id.as_str(), first.job.attempts), ("j1", 1));
        assert_eq!(first.job.lease_until, Some(t0 + Duration::seconds(60)));
        assert!(
            store
                .claim_jobs("a1", "lc", t0, 60, 10)
                .await
                .unwrap()
                .is_empty()
        );

        // Only the lease holder reports.
        let failed = JobOutcome::Failed {
            code: "reload_failed".into(),
            message: "exit status 1".into(),
            retry_at: Some(t0 + Duration::seconds(120)),
        };
        assert!(matches!(
            store
                .finish_job("j1", "a2", &first.lease_id, &failed, t0)
                .await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store
                .finish_job("j1", "a1", "not-the-lease", &failed, t0)
                .await,
            Err(StoreError::LeaseLost)
        ));

        // The agent dies: after the lease the job is claimed again, the lost attempt
        // recorded, and the dead agent's late result refused.
        let later = t0 + Duration::seconds(61);
        let again = store.claim_jobs("a1", "ld", later, 60, 10).await.unwrap();
        assert_eq!(again.len(), 1, "{}", tdb.label);
        assert_eq!(again[0].job.attempts, 2);
        assert_eq!(
            again[0].job.last_error_code.as_deref(),
            Some("lease_expired")
        );
        assert!(matches!(
            store
                .finish_job("j1", "a1", &first.lease_id, &failed, later)
                .await,
            Err(StoreError::LeaseLost)
        ));

        // A failed attempt waits for its retry time.
        let j = store
            .finish_job("j1", "a1", "ld", &failed, later)
            .await
            .unwrap();
        assert_eq!(
            (j.state, j.last_error_code.as_deref()),
            (JobState::Queued, Some("reload_failed"))
        );
        assert!(
            store
                .claim_jobs("a1", "le", later, 60, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let due = t0 + Duration::seconds(120);
        let third = store.claim_jobs("a1", "lf", due, 60, 10).await.unwrap();
        assert_eq!(third[0].job.attempts, 3);
        // The last attempt's lease ends too: given up, not dropped.
        store
            .expire_leases(due + Duration::seconds(61))
            .await
            .unwrap();
        let d = store.deployment("d1").await.unwrap();
        assert_eq!(d.job.state, JobState::Failed, "{}", tdb.label);
        assert_eq!(d.job.last_error_code.as_deref(), Some("lease_expired"));
        assert!(d.job.finished_at.is_some());

        // Restarting (a retry, or a renewed certificate) makes a fresh job.
        let t1 = due + Duration::seconds(100);
        store
            .restart_deployment("d1", &"cd".repeat(32), "j2", 3, t1)
            .await
            .unwrap();
        assert_eq!(
            store.deployments_of(&"cd".repeat(32)).await.unwrap(),
            ["d1"]
        );
        let claimed = store.claim_jobs("a1", "lg", t1, 60, 10).await.unwrap();
        assert_eq!(claimed[0].job.id, "j2");
        assert_eq!(
            store
                .deployment_of_job("j2")
                .await
                .unwrap()
                .unwrap()
                .spec
                .id,
            "d1"
        );
        assert!(store.deployment_of_job("j1").await.unwrap().is_none());
        let j = store
            .finish_job("j2", "a1", "lg", &JobOutcome::Succeeded, t1)
            .await
            .unwrap();
        assert_eq!(j.state, JobState::Succeeded);
        // A queued job replaced by a restart is closed as superseded.
        store
            .restart_deployment("d1", &"cd".repeat(32), "j3", 3, t1)
            .await
            .unwrap();
        store
            .restart_deployment("d1", &"cd".repeat(32), "j4", 3, t1)
            .await
            .unwrap();
        let j3 = store.job("j3").await.unwrap();
        assert_eq!(
            (j3.state, j3.last_error_code.as_deref()),
            (JobState::Failed, Some("superseded"))
        );
        assert_eq!(store.deployments(None).await.unwrap().len(), 1);
        assert_eq!(store.deployments(Some("ff")).await.unwrap().len(), 0);
        replica.close().await;
        store.close().await;
    }
}

#[tokio::test]
async fn findings_open_fix_and_come_back_per_endpoint_and_a_failed_scan_changes_nothing() {
    use certkeeper_core::findings::{Finding, FindingKind, Severity};
    use certkeeper_store::{FindingFilter, ScanEndpoint};
    let f = |kind: FindingKind| Finding {
        kind,
        severity: Severity::High,
        title: kind.as_str().into(),
        evidence: "seen".into(),
        fix: "fix it".into(),
        suites: vec![],
    };
    for tdb in db::all().unwrap() {
        let store = Store::open(&tdb.url).await.unwrap();
        let e = ScanEndpoint {
            host: "www.test".into(),
            ip: "192.0.2.1".into(),
            port: 443,
            agent_id: None,
        };
        let t0 = OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap();
        let kinds = |fs: &[certkeeper_store::FindingRow]| -> Vec<(FindingKind, bool)> {
            let mut k: Vec<_> = fs.iter().map(|r| (r.finding.kind, r.open)).collect();
            k.sort();
            k
        };
        let all = FindingFilter {
            all: true,
            ..Default::default()
        };
        for (i, (error, found, new, fixed)) in [
            (
                None,
                vec![FindingKind::Heartbleed, FindingKind::CipherRc4],
                vec![FindingKind::CipherRc4, FindingKind::Heartbleed],
                vec![],
            ),
            (
                None,
                vec![FindingKind::CipherRc4],
                vec![],
                vec![FindingKind::Heartbleed],
            ),
            // Unreachable: nothing fixed, nothing new.
            (Some("timed out"), vec![], vec![], vec![]),
            (
                None,
                vec![FindingKind::CipherRc4, FindingKind::Heartbleed],
                vec![FindingKind::Heartbleed],
                vec![],
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let id = format!("s{i}");
            let at = t0 + Duration::hours(i as i64);
            store.create_scan(&id, "admin", 1, at).await.unwrap();
            let findings: Vec<Finding> = found.iter().map(|k| f(*k)).collect();
            let c = store
                .record_scan_result(
                    &id,
                    &e,
                    at,
                    error,
                    None,
                    &findings,
                    certkeeper_core::findings::ALL_KINDS,
                )
                .await
                .unwrap();
            let c = c.expect("first result of this scan");
            assert_eq!((c.new, c.fixed), (new, fixed), "scan {i} ({})", tdb.label);
            // A re-sent result for the same scan and endpoint changes nothing.
            assert!(
                store
                    .record_scan_result(
                        &id,
                        &e,
                        at,
                        None,
                        None,
                        &[],
                        certkeeper_core::findings::ALL_KINDS
                    )
                    .await
                    .unwrap()
                    .is_none()
            );
            store.finish_scan(&id, at).await.unwrap();
            let (scan, results) = store.scan(&id).await.unwrap();
            assert_eq!((scan.status.as_str(), results.len()), ("done", 1));
            assert_eq!(results[0].error.as_deref(), error);
            if i == 1 {
                assert_eq!(
                    kinds(&store.findings(&all).await.unwrap()),
                    [
                        (FindingKind::CipherRc4, true),
                        (FindingKind::Heartbleed, false)
                    ]
                );
                let fixed = FindingFilter {
                    fixed: Some(true),
                    ..Default::default()
                };
                assert_eq!(store.findings(&fixed).await.unwrap()[0].fixed_at, Some(at));
            }
        }
        // Heartbleed came back: open again, first seen at its return.
        let open = store.findings(&FindingFilter::default()).await.unwrap();
        assert_eq!(
            kinds(&open),
            [
                (FindingKind::CipherRc4, true),
                (FindingKind::Heartbleed, true)
            ]
        );
        let hb = open
            .iter()
            .find(|r| r.finding.kind == FindingKind::Heartbleed)
            .unwrap();
        assert_eq!(hb.first_seen, t0 + Duration::hours(3));
        let rc4 = open
            .iter()
            .find(|r| r.finding.kind == FindingKind::CipherRc4)
            .unwrap();
        assert_eq!(rc4.first_seen, t0);
        let by_kind = FindingFilter {
            kind: Some(FindingKind::Heartbleed),
            host: Some("www.test".into()),
            port: Some(443),
            ..Default::default()
        };
        assert_eq!(store.findings(&by_kind).await.unwrap().len(), 1);
        let other = FindingFilter {
            host: Some("other.test".into()),
            ..Default::default()
        };
        assert!(store.findings(&other).await.unwrap().is_empty());
    }
}

/// A scan whose agent's job ended without sending every result is closed by the
/// sweep (an error result per missing endpoint), and one nobody finishes is abandoned.
#[tokio::test]
async fn the_sweep_closes_scans_no_one_will_finish() {
    use certkeeper_store::{JobOutcome, ScanEndpoint};
    for tdb in db::all().unwrap() {
        let store = Store::open(&tdb.url).await.unwrap();
        with_agent(&store, "a1").await;
        let t0 = OffsetDateTime::now_utc();
        let e = |ip: &str| ScanEndpoint {
            host: "www.test".into(),
            ip: ip.into(),
            port: 443,
            agent_id: Some("a1".into()),
        };
        store.create_scan("s1", "admin", 2, t0).await.unwrap();
        store
            .create_scan_job("s1", "j1", "a1", &[e("192.0.2.1"), e("192.0.2.2")], t0)
            .await
            .unwrap();
        let claimed = store.claim_jobs("a1", "l1", t0, 60, 10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        // One result arrives; then the job ends.
        store
            .record_scan_result("s1", &e("192.0.2.1"), t0, None, None, &[], &[])
            .await
            .unwrap();
        assert!(
            store
                .sweep_scans(t0, Duration::hours(6))
                .await
                .unwrap()
                .is_empty(),
            "job still leased"
        );
        store
            .finish_job("j1", "a1", "l1", &JobOutcome::Succeeded, t0)
            .await
            .unwrap();
        assert_eq!(
            store.sweep_scans(t0, Duration::hours(6)).await.unwrap(),
            ["s1"],
            "{}",
            tdb.label
        );
        let (scan, results) = store.scan("s1").await.unwrap();
        assert_eq!(scan.status, "done");
        let missing = results
            .iter()
            .find(|r| r.endpoint.ip == "192.0.2.2")
            .unwrap();
        assert!(
            missing
                .error
                .as_deref()
                .unwrap()
                .contains("without a result"),
            "{:?}",
            missing.error
        );
        // A scan the server never finished (it restarted): abandoned after the limit.
        store
            .create_scan("s2", "admin", 1, t0 - Duration::hours(7))
            .await
            .unwrap();
        assert_eq!(
            store.sweep_scans(t0, Duration::hours(6)).await.unwrap(),
            ["s2"]
        );
        assert_eq!(store.scan("s2").await.unwrap().0.status, "abandoned");
    }
}

#[tokio::test]
async fn notification_candidates_know_where_served_and_when_renewed() {
    let pki = TestPki::new().unwrap();
    // Expires in 10 days, served at n.test; then n.test serves a later one for the
    // same names: the first counts as renewed. A second certificate stays served.
    let old = pki
        .leaf(&LeafSpec::new("n.test", KeyKind::EcdsaP256).valid_days(-80, 90))
        .unwrap();
    let new = pki
        .leaf(&LeafSpec::new("n.test", KeyKind::EcdsaP256).valid_days(-1, 90))
        .unwrap();
    let other = pki
        .leaf(&LeafSpec::new("o.test", KeyKind::EcdsaP256).valid_days(-85, 90))
        .unwrap();
    let narrower = pki
        .leaf(
            &LeafSpec::new("w.test", KeyKind::EcdsaP256)
                .names(&["w.test", "x.test"])
                .valid_days(-84, 90),
        )
        .unwrap();
    let wider_late = pki
        .leaf(&LeafSpec::new("w.test", KeyKind::EcdsaP256).valid_days(-1, 90))
        .unwrap();
    for tdb in db::all().unwrap() {
        let store = Store::open(&tdb.url).await.unwrap();
        with_agent(&store, "ag1").await;
        let now = OffsetDateTime::now_utc();
        let t0 = now - Duration::days(2);
        store
            .ingest(
                &meta("ag1", "a", 3),
                &[
                    tls_sighting("n.test", 443, &[&old.der], t0),
                    tls_sighting("o.test", 443, &[&other.der], t0),
                    tls_sighting("w.test", 443, &[&narrower.der], t0),
                ],
                t0,
            )
            .await
            .unwrap();
        let cutoff = now + Duration::days(30);
        let page = store.notify_candidates(cutoff, None, 100).await.unwrap();
        let shas: Vec<&str> = page.items.iter().map(|c| c.sha256.as_str()).collect();
        let old_sha = parsed(&old.der).facts.sha256.to_string();
        let other_sha = parsed(&other.der).facts.sha256.to_string();
        let w_sha = parsed(&narrower.der).facts.sha256.to_string();
        assert_eq!(
            shas,
            vec![other_sha.as_str(), w_sha.as_str(), old_sha.as_str()],
            "{}",
            tdb.label
        );
        assert!(page.items.iter().all(|c| c.renewed_by.is_none()));
        assert_eq!(page.items[2].served_at.len(), 1);
        assert_eq!(page.items[2].served_at[0].host, "n.test");

        // n.test moves on to the later certificate; w.test to one that lacks x.test.
        let t1 = now - Duration::days(1);
        store
            .ingest(
                &meta("ag1", "b", 2),
                &[
                    tls_sighting("n.test", 443, &[&new.der], t1),
                    tls_sighting("w.test", 443, &[&wider_late.der], t1),
                ],
                t1,
            )
            .await
            .unwrap();
        let page = store.notify_candidates(cutoff, None, 100).await.unwrap();
        let get = |sha: &str| page.items.iter().find(|c| c.sha256 == sha).unwrap().clone();
        assert_eq!(
            get(&old_sha).renewed_by.as_deref(),
            Some(parsed(&new.der).facts.sha256.to_string().as_str()),
            "{}",
            tdb.label
        );
        assert!(get(&old_sha).served_at.is_empty());
        assert_eq!(
            get(&w_sha).renewed_by,
            None,
            "the new one does not cover x.test"
        );
        assert_eq!(get(&other_sha).renewed_by, None);

        // Paging by (not_after, sha256) walks the same list.
        let first = store.notify_candidates(cutoff, None, 2).await.unwrap();
        let rest = store
            .notify_candidates(cutoff, first.next.as_ref(), 2)
            .await
            .unwrap();
        assert_eq!(first.items.len() + rest.items.len(), 3);
        assert_eq!(rest.items[0].sha256, old_sha);

        // Owner, tags, retirement.
        store
            .set_certificate_meta(
                &other_sha,
                &certkeeper_store::CertMeta {
                    owner: Some("web".into()),
                    tags: vec!["prod".into()],
                    retired_at: Some(now),
                },
                now,
            )
            .await
            .unwrap();
        let v = store.notify_view(&other_sha).await.unwrap();
        assert_eq!(v.owner.as_deref(), Some("web"));
        assert_eq!(v.tags, vec!["prod".to_string()]);
        assert!(v.retired);
        assert!(matches!(
            store
                .set_certificate_meta(&"0".repeat(64), &Default::default(), now)
                .await,
            Err(StoreError::NotFound)
        ));
        store.close().await;
    }
}

#[tokio::test]
async fn messages_are_claimed_once_and_deliveries_leased_retried_and_logged() {
    use certkeeper_store::{DeliveryOutcome, NewDelivery};
    for tdb in db::all().unwrap() {
        let store = Store::open(&tdb.url).await.unwrap();
        let now = OffsetDateTime::now_utc();
        let keys = vec!["k1".to_string(), "k2".to_string()];
        let d = |id: &str| NewDelivery {
            id: id.into(),
            policy: "default".into(),
            channel: "email".into(),
            recipient: "ops@example.test".into(),
        };
        let got = store
            .enqueue_delivery(&d("d1"), &keys, now, |idx| format!("{idx:?}"))
            .await
            .unwrap();
        assert_eq!(got, vec![0, 1]);
        // A second run (or replica) with one new key claims only that one.
        let keys2 = vec!["k2".to_string(), "k3".to_string()];
        let got = store
            .enqueue_delivery(&d("d2"), &keys2, now, |idx| format!("{idx:?}"))
            .await
            .unwrap();
        assert_eq!(got, vec![1], "{}", tdb.label);
        let none = store
            .enqueue_delivery(&d("d3"), &keys, now, |_| unreachable!("nothing new"))
            .await
            .unwrap();
        assert!(none.is_empty());
        let all = store.deliveries(None, 10).await.unwrap();
        assert_eq!(all.len(), 2, "no delivery without a new message");

        // Two workers: each delivery goes to one.
        let a = store.claim_deliveries("wa", now, 60, 10).await.unwrap();
        let b = store.claim_deliveries("wb", now, 60, 10).await.unwrap();
        assert_eq!(a.len(), 2);
        assert!(b.is_empty(), "{}", tdb.label);
        let d1 = a.iter().find(|x| x.id == "d1").unwrap();
        assert_eq!(d1.payload, "[0, 1]");
        store
            .finish_delivery(
                "d1",
                "wa",
                &DeliveryOutcome::Retry {
                    at: now + Duration::seconds(30),
                    error: "smtp: 451 try later".into(),
                },
                now,
            )
            .await
            .unwrap();
        assert!(matches!(
            store
                .finish_delivery("d1", "wa", &DeliveryOutcome::Sent, now)
                .await,
            Err(StoreError::LeaseLost)
        ));
        // Not due yet; then due; d2's lease runs out and it comes back too.
        assert!(
            store
                .claim_deliveries("wc", now + Duration::seconds(10), 60, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let later = store
            .claim_deliveries("wc", now + Duration::seconds(61), 60, 10)
            .await
            .unwrap();
        assert_eq!(later.len(), 2, "{}", tdb.label);
        store
            .finish_delivery(
                "d1",
                "wc",
                &DeliveryOutcome::Sent,
                now + Duration::seconds(61),
            )
            .await
            .unwrap();
        let attempts = store.delivery_attempts("d1").await.unwrap();
        assert_eq!(
            attempts
                .iter()
                .map(|a| (a.attempt, a.outcome.as_str()))
                .collect::<Vec<_>>(),
            vec![(1, "retry"), (2, "sent")]
        );
        assert_eq!(attempts[0].error.as_deref(), Some("smtp: 451 try later"));
        let sent = store.deliveries(Some("sent"), 10).await.unwrap();
        assert_eq!(sent.len(), 1);
        let claimed = store.claimed_messages(&keys2).await.unwrap();
        assert_eq!(claimed.len(), 2);
        store.close().await;
    }
}

#[tokio::test]
async fn ticket_work_is_one_per_key_and_a_newer_action_runs_after_the_one_in_progress() {
    use certkeeper_store::{TicketRecord, WorkOutcome};
    for tdb in db::all().unwrap() {
        let store = Store::open(&tdb.url).await.unwrap();
        let now = OffsetDateTime::now_utc();
        store
            .queue_ticket_work("rt", "cm1-a", "{\"v\":1}", now)
            .await
            .unwrap();
        store
            .queue_ticket_work("rt", "cm1-a", "{\"v\":2}", now)
            .await
            .unwrap();
        store
            .queue_ticket_work("rt", "cm1-b", "{\"v\":1}", now)
            .await
            .unwrap();
        let w = store.claim_ticket_work("w1", now, 60, 10).await.unwrap();
        assert_eq!(w.len(), 2, "{}", tdb.label);
        let a = w.iter().find(|x| x.key == "cm1-a").unwrap().clone();
        assert_eq!(
            a.action, "{\"v\":2}",
            "the latest action replaces one not begun"
        );
        assert!(
            store
                .claim_ticket_work("w2", now, 60, 10)
                .await
                .unwrap()
                .is_empty()
        );
        // A newer action while a is in progress: finishing a leaves it pending.
        store
            .queue_ticket_work("rt", "cm1-a", "{\"v\":3}", now)
            .await
            .unwrap();
        store
            .finish_ticket_work(&a, &WorkOutcome::Done, now)
            .await
            .unwrap();
        let again = store.claim_ticket_work("w2", now, 60, 10).await.unwrap();
        assert_eq!(again.len(), 1, "{}", tdb.label);
        assert_eq!(again[0].action, "{\"v\":3}");
        store
            .finish_ticket_work(
                &again[0],
                &WorkOutcome::Retry {
                    at: now + Duration::seconds(5),
                    error: "servicenow is unavailable: HTTP 503".into(),
                },
                now,
            )
            .await
            .unwrap();
        assert_eq!(
            store
                .ticket_work_state("rt", "cm1-a")
                .await
                .unwrap()
                .map(|s| s.0),
            Some("pending".to_string())
        );
        let b = w.iter().find(|x| x.key == "cm1-b").unwrap().clone();
        store
            .finish_ticket_work(&b, &WorkOutcome::Done, now)
            .await
            .unwrap();
        assert!(matches!(
            store.finish_ticket_work(&b, &WorkOutcome::Done, now).await,
            Err(StoreError::LeaseLost)
        ));

        let rec = TicketRecord {
            system: "rt".into(),
            key: "cm1-a".into(),
            kind: "expiry".into(),
            key_text: "expiry|0A|192.0.2.10".into(),
            ticket_id: "12".into(),
            number: "#12".into(),
            status: "active".into(),
            raw_status: "new".into(),
            priority: "high".into(),
            ip: "192.0.2.10".into(),
            serial: "0a".into(),
            domain: None,
            sha256: Some("ab".repeat(32)),
            last_action: "created".into(),
            created_at: now,
            updated_at: now,
        };
        store.upsert_ticket(&rec).await.unwrap();
        let mut rec2 = rec.clone();
        rec2.status = "resolved".into();
        rec2.last_action = "noted".into();
        rec2.sha256 = None;
        store.upsert_ticket(&rec2).await.unwrap();
        let got = store.ticket("rt", "cm1-a").await.unwrap().unwrap();
        assert_eq!(got.status, "resolved");
        assert_eq!(got.sha256, rec.sha256, "kept when not given");
        assert_eq!(store.tickets(None, None, 10).await.unwrap().len(), 1);
        assert_eq!(
            store
                .tickets(Some("rt"), Some("expiry"), 10)
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(
            store
                .tickets(Some("jira"), None, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store
                .tickets_of_certificate(&"ab".repeat(32))
                .await
                .unwrap()
                .len(),
            1
        );
        store.close().await;
    }
}
