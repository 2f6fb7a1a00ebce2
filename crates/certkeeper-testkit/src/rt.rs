//! The real Request Tracker 5 the RT connector tests talk to: `.ci/start-rt` starts
//! Debian's RT on loopback and `.ci/run` exports its URL and an auth token as
//! `CERTKEEPER_TEST_RT_URL` and `CERTKEEPER_TEST_RT_TOKEN`.

/// Where the test RT is and the token to use.
#[derive(Clone)]
pub struct TestRt {
    /// WebBaseURL + WebPath, such as `http://127.0.0.1:18080`.
    pub url: String,
    /// An auth token of RT's root user.
    pub token: String,
}

impl std::fmt::Debug for TestRt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestRt")
            .field("url", &self.url)
            .field("token", &"***")
            .finish()
    }
}

/// The test RT, or `None` (after printing why the test is skipped) when
/// `CERTKEEPER_TEST_RT_URL` is not set. CI always sets it; a set URL without a token
/// is a broken setup and panics.
pub fn test_rt() -> Option<TestRt> {
    let url = std::env::var("CERTKEEPER_TEST_RT_URL")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let Some(url) = url else {
        eprintln!("skipped: CERTKEEPER_TEST_RT_URL not set (run `eval \"$(.ci/start-rt)\"`)");
        return None;
    };
    let token = std::env::var("CERTKEEPER_TEST_RT_TOKEN")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .expect("CERTKEEPER_TEST_RT_URL is set but CERTKEEPER_TEST_RT_TOKEN is not");
    Some(TestRt { url, token })
}
