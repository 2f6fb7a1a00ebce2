//! PLACEHOLDER: e-mail over SMTP (being written, issue 4).
