//! PLACEHOLDER: signed webhook, Slack, PagerDuty (being written, issue 4).
