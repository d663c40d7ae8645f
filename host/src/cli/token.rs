//! `spawner token mint`: a capability token for trying auth plugins or
//! calling a backend by hand.

use std::process::ExitCode;

use clap::Subcommand;

use crate::token::{TokenKey, now_unix};

/// Token commands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a token for one backend.
    Mint {
        /// The signing secret (at least 16 bytes); `--token-secret` as in
        /// `spawner dev` and `spawner plugin run` works too.
        #[arg(long, visible_alias = "token-secret", env = "SPAWNER_TOKEN_SECRET", hide_env_values = true)]
        secret: crate::secret::Secret,
        /// Backend the token grants access to.
        #[arg(long)]
        backend: String,
        /// User the token is for.
        #[arg(long)]
        subject: Option<String>,
        /// Validity in seconds (negative: already expired, for tests).
        #[arg(long, default_value_t = 3600, allow_negative_numbers = true)]
        ttl: i64,
    },
}

/// Runs a token command.
pub fn run(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Mint { secret, backend, subject, ttl } => {
            // The limit the API and the config hold tokens to (a leaked
            // token cannot be revoked, only outlived).
            if ttl > crate::token::MAX_TTL_SECONDS as i64 {
                anyhow::bail!("--ttl must be at most {} (30 days), got {ttl}", crate::token::MAX_TTL_SECONDS);
            }
            // As the API holds subjects to: the proxy sends it to the
            // backend in a header, and a plugin's answer with a subject it
            // could not send denies every request.
            if let Some(subject) = &subject {
                if subject.is_empty() {
                    anyhow::bail!("--subject must not be empty: leave it out for a token that names no user");
                }
                crate::backends::check_user("--subject", subject)?;
            }
            if backend.trim().is_empty() {
                anyhow::bail!("--backend is empty: give the name of the backend the token opens");
            }
            let key = TokenKey::new(secret.expose().as_bytes())?;
            let now = now_unix();
            let exp = now.saturating_add_signed(ttl);
            println!("{}", key.mint(&backend, subject.as_deref(), now, exp));
            Ok(ExitCode::SUCCESS)
        }
    }
}
