//! http-01 answered by an agent on the host that serves the names. An order names the
//! agent (`"http01_agent"` on `POST /api/v1/requests/{id}/acme`); for each challenge the
//! server queues an `http01` job for it holding the token and the key authorization
//! (never the account key), waits until the agent reports (job result `ready`) that it
//! serves the token on its `[acme] http01_listen`, and only then lets the CA validate.
//! When the order is over (valid or not) the server ends the job and the agent stops
//! serving the token. An agent that does not take the job, or does not report ready,
//! within the wait (`[acme] http01_agent_wait_secs`) fails the order with a clear error.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use certkeeper_connect::acme::{BoxFuture, Http01Tokens};
use certkeeper_core::jobs::JobState;
use certkeeper_store::{JobOutcome, Store};
use time::OffsetDateTime;

/// How often the server looks at the job while it waits for the agent.
const POLL: Duration = Duration::from_millis(200);

/// The token store of one order whose http-01 challenges an agent answers.
pub(crate) struct AgentTokens {
    store: Store,
    agent_id: String,
    /// What the jobs are about (the request id).
    subject: String,
    wait: Duration,
    /// token → job id, for the jobs this order queued.
    jobs: Mutex<HashMap<String, String>>,
    /// Why the agent cannot serve this order; later attempts of the order fail at once.
    gave_up: Mutex<Option<String>>,
}

impl AgentTokens {
    pub(crate) fn new(store: Store, agent_id: &str, subject: &str, wait: Duration) -> Self {
        AgentTokens {
            store,
            agent_id: agent_id.to_string(),
            subject: subject.to_string(),
            wait,
            jobs: Mutex::new(HashMap::new()),
            gave_up: Mutex::new(None),
        }
    }

    /// Why the agent could not serve the order, when that is why it failed.
    pub(crate) fn gave_up(&self) -> Option<String> {
        self.gave_up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn give_up(&self, why: &str) -> String {
        *self.gave_up.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.to_string());
        why.to_string()
    }

    async fn publish_token(&self, token: &str, key_authorization: &str) -> Result<(), String> {
        if let Some(why) = self.gave_up() {
            return Err(why);
        }
        let job_id = uuid::Uuid::new_v4().to_string();
        let started = OffsetDateTime::now_utc();
        self.store
            .create_http01_job(
                &job_id,
                &self.agent_id,
                &self.subject,
                token,
                key_authorization,
                started,
            )
            .await
            .map_err(|e| e.to_string())?;
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.to_string(), job_id.clone());
        tracing::info!(job = %job_id, agent = %self.agent_id, request = %self.subject, "http-01 job queued for the agent");
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let job = self.store.job(&job_id).await.map_err(|e| e.to_string())?;
            match job.state {
                JobState::Leased => {
                    let ready = self
                        .store
                        .http01_job(&job_id)
                        .await
                        .map_err(|e| e.to_string())?
                        .is_some_and(|h| h.ready_at.is_some());
                    if ready {
                        tracing::info!(job = %job_id, agent = %self.agent_id, "the agent serves the http-01 token");
                        return Ok(());
                    }
                }
                JobState::Failed | JobState::Succeeded => {
                    let why = format!(
                        "agent {} could not serve the http-01 token: {}: {}",
                        self.agent_id,
                        job.last_error_code.as_deref().unwrap_or("failed"),
                        job.last_error.as_deref().unwrap_or("no reason given")
                    );
                    return Err(self.give_up(&why));
                }
                JobState::Queued => {}
            }
            if tokio::time::Instant::now() >= deadline {
                let secs = self.wait.as_secs();
                let why = if job.state == JobState::Queued {
                    format!(
                        "agent {} did not take its http-01 job within {secs} s; is `certkeeper agent run` running there, with [acme] http01_listen in its agent.toml?",
                        self.agent_id
                    )
                } else {
                    format!(
                        "agent {} took its http-01 job but did not report serving the token within {secs} s",
                        self.agent_id
                    )
                };
                let outcome = JobOutcome::Failed {
                    code: "agent_timeout".into(),
                    message: why.clone(),
                    retry_at: None,
                };
                self.store
                    .end_job(&job_id, &outcome, OffsetDateTime::now_utc())
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::warn!(job = %job_id, agent = %self.agent_id, "{why}");
                return Err(self.give_up(&why));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn withdraw_token(&self, token: &str) -> Result<(), String> {
        let job = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
        let Some(job_id) = job else { return Ok(()) };
        // The order is over: the agent's part is done, whatever the CA decided.
        self.store
            .end_job(&job_id, &JobOutcome::Succeeded, OffsetDateTime::now_utc())
            .await
            .map_err(|e| e.to_string())
    }
}

impl Http01Tokens for AgentTokens {
    fn publish<'a>(
        &'a self,
        token: &'a str,
        key_authorization: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.publish_token(token, key_authorization))
    }

    fn withdraw<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.withdraw_token(token))
    }
}
