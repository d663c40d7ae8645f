//! Safe wrappers over the `spawner:plugin/host` imports.
//!
//! Inside Spawner these call the host. In native `cargo test` runs they are
//! served by the `testing::Harness` in effect (the `testing` module, native builds only), so
//! plugin logic can be tested without WebAssembly.

use alloc::string::{String, ToString};

use serde::de::DeserializeOwned;

use crate::{LogLevel, PluginError};

pub use crate::bindings::auth::spawner::plugin::types::{Capability, TokenError};

/// Writes a line to Spawner's log, tagged with this plugin's kind and name.
pub fn log(level: LogLevel, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::auth::spawner::plugin::host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::record_log(level, message);
}

/// Logs at `info` level.
pub fn info(message: &str) {
    log(LogLevel::Info, message)
}

/// Logs at `warn` level.
pub fn warn(message: &str) {
    log(LogLevel::Warn, message)
}

/// The plugin's settings exactly as the operator wrote them ("" when none).
pub fn settings() -> String {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::auth::spawner::plugin::host::settings();
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::current_settings();
}

/// The plugin's settings parsed as JSON into `T`; empty settings give
/// `T::default()`. Use the same function in `validate_settings` (through
/// [`parse_settings`]) so that a bad file is refused at load time.
pub fn settings_json<T: DeserializeOwned + Default>() -> Result<T, PluginError> {
    parse_settings(&settings())
}

/// Parses settings text as JSON into `T` (empty text gives `T::default()`),
/// with an error that says what is wrong and where.
pub fn parse_settings<T: DeserializeOwned + Default>(text: &str) -> Result<T, PluginError> {
    if text.trim().is_empty() {
        return Ok(T::default());
    }
    serde_json::from_str(text).map_err(|e| match e.classify() {
        // Not JSON at all (e.g. `secret=x`, or a file of another format):
        // say what settings are, besides where the parser stopped.
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            PluginError::InvalidSettings(alloc::format!("not JSON ({e}); settings are a JSON object, e.g. {{\"key\": \"value\"}}"))
        }
        _ => PluginError::InvalidSettings(without_value(&e)),
    })
}

/// serde's message for a refused value quotes it (`invalid type: string
/// "s3cr3t", expected u32`), and settings hold secrets, while this message
/// goes to Spawner's log (and, on Kubernetes, to an Event): it keeps what
/// was wrong, where and what was expected, and leaves the value out.
fn without_value(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let Some(kind) = ["invalid type", "invalid value"].into_iter().find(|k| full.starts_with(k)) else {
        // Field names (unknown or missing), lengths and an enum's unknown
        // choice (`unknown variant `random`, expected `spread` or `pack``)
        // are not secrets, and say best what to fix.
        return full;
    };
    // The last one: the value, quoted before it, may hold the same words.
    let expected = full.rfind(", expected ").map(|i| &full[i + ", expected ".len()..]).unwrap_or("");
    let expected = expected.rfind(" at line ").map_or(expected, |i| &expected[..i]);
    alloc::format!(
        "{kind} at line {} column {}: expected {expected} (the value is not repeated here: settings may hold secrets)",
        e.line(),
        e.column()
    )
}

/// Checks a capability token's signature with the host's secret and returns
/// its claims. The caller still compares `expires-at` with the request's
/// `now` and `backend` with the target backend. Tokens where Spawner puts
/// them (bearer header, token query parameter, token cookie) arrive already
/// checked in `AuthRequest::credentials`, which costs the plugin no import;
/// this is for tokens found elsewhere. A token for an earlier backend of
/// the request's backend's name (minted for another object of it, or
/// issued before it was created) is refused as `TokenError::Malformed`,
/// saying so, here and in `credentials`.
pub fn verify_capability_token(token: &str) -> Result<Capability, TokenError> {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::auth::spawner::plugin::host::verify_capability_token(token);
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::verify_token(token);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Default, Debug)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        #[allow(dead_code)]
        grace: u32,
    }

    #[test]
    fn settings_errors_say_what_is_wrong() {
        let not_json = parse_settings::<Settings>("grace=30").unwrap_err();
        assert_eq!(
            not_json,
            PluginError::InvalidSettings(
                r#"not JSON (expected value at line 1 column 1); settings are a JSON object, e.g. {"key": "value"}"#.into()
            )
        );
        let PluginError::InvalidSettings(wrong) = parse_settings::<Settings>(r#"{"grce": 30}"#).unwrap_err() else { panic!() };
        assert!(wrong.starts_with("unknown field `grce`"), "{wrong}");
        assert!(parse_settings::<Settings>("  ").is_ok(), "empty: the defaults");
        // The value may be a secret: the message goes to logs and Events.
        let PluginError::InvalidSettings(typed) = parse_settings::<Settings>(r#"{"grace": "hunter2"}"#).unwrap_err() else { panic!() };
        assert_eq!(typed, "invalid type at line 1 column 19: expected u32 (the value is not repeated here: settings may hold secrets)");
        let PluginError::InvalidSettings(sly) = parse_settings::<Settings>(r#"{"grace": "a, expected hunter2"}"#).unwrap_err() else {
            panic!()
        };
        assert!(!sly.contains("hunter2") && sly.contains("expected u32"), "{sly}");
        let PluginError::InvalidSettings(valued) = parse_settings::<Settings>(r#"{"grace": -7}"#).unwrap_err() else { panic!() };
        assert!(valued.starts_with("invalid value at line 1") && !valued.contains("-7"), "{valued}");
    }
}
