//! Spawner's default idle plugin.
//!
//! Terminates a backend when it reaches its lifetime limit (reason
//! `lifetime`), or when it has had no open connection and no request for its
//! grace period (reason `idle`). A WebSocket that stays open keeps its
//! backend alive even when silent: an open editor tab is a user.
//!
//! Settings: none (`{}` or empty); the grace period and lifetime limit are
//! per backend, set when it is created.

#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use serde::Deserialize;
use spawner_plugin_sdk::host;
use spawner_plugin_sdk::idle::*;

/// No settings; the struct exists so unknown fields are refused at load.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {}

/// The plugin, exported below.
pub struct DefaultIdle;

impl Idle for DefaultIdle {
    fn evaluate(request: IdleRequest) -> Result<IdleVerdict, PluginError> {
        Ok(decide(&request))
    }

    fn validate_settings(settings: &str) -> Result<(), PluginError> {
        host::parse_settings::<Settings>(settings).map(|_| ())
    }
}

spawner_plugin_sdk::lean_runtime!();
spawner_plugin_sdk::export!(idle: DefaultIdle);

/// The policy as a plain function.
pub fn decide(request: &IdleRequest) -> IdleVerdict {
    if let Some(limit) = request.lifetime_limit_seconds
        && request.age_seconds >= limit
    {
        return IdleVerdict::terminate_lifetime(format!("lifetime limit of {limit} s reached (age {} s)", request.age_seconds));
    }
    let a = &request.activity;
    let unused = a.open_connections == 0 && a.in_flight_requests == 0;
    if unused && a.seconds_since_last_activity >= request.grace_period_seconds {
        return IdleVerdict::terminate_idle(format!(
            "no connections for {} s (grace period {} s)",
            a.seconds_since_last_activity, request.grace_period_seconds
        ));
    }
    IdleVerdict::Keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use spawner_plugin_sdk::testing::{backend, idle_request};

    fn request(open: u32, quiet: u64, age: u64, lifetime: Option<u64>) -> IdleRequest {
        let mut request = idle_request(backend("b"), quiet, 300, 0);
        request.activity.open_connections = open;
        request.age_seconds = age;
        request.lifetime_limit_seconds = lifetime;
        request
    }

    fn kind(v: IdleVerdict) -> Option<TerminationKind> {
        match v {
            IdleVerdict::Keep => None,
            IdleVerdict::Terminate(t) => Some(t.kind),
        }
    }

    #[test]
    fn quiet_for_the_grace_period_is_idle() {
        assert_eq!(kind(decide(&request(0, 300, 1000, None))), Some(TerminationKind::Idle));
        assert_eq!(kind(decide(&request(0, 299, 1000, None))), None);
    }

    #[test]
    fn an_open_connection_keeps_it_even_when_silent() {
        assert_eq!(kind(decide(&request(1, 10_000, 10_000, None))), None);
    }

    #[test]
    fn the_lifetime_limit_ends_even_a_busy_backend() {
        assert_eq!(kind(decide(&request(5, 0, 3600, Some(3600)))), Some(TerminationKind::Lifetime));
        assert_eq!(kind(decide(&request(5, 0, 3599, Some(3600)))), None);
    }

    #[test]
    fn unknown_settings_are_refused() {
        assert!(DefaultIdle::validate_settings(r#"{"grace":1}"#).is_err());
        assert!(DefaultIdle::validate_settings("{}").is_ok());
    }
}
