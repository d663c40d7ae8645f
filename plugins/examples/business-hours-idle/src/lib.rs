//! Example idle policy: keep backends alive during business hours.
//!
//! During working hours (local time given by a UTC offset, Monday to Friday
//! unless `weekends` is set) backends stay up even when nobody is connected,
//! so people coming back from a meeting find their session warm. Outside
//! those hours the usual grace period applies. The lifetime limit always
//! applies.
//!
//! Settings: `{"utc-offset-minutes": 60, "start-hour": 8, "end-hour": 18, "weekends": false}`.

use serde::Deserialize;
use spawner_plugin_sdk::host;
use spawner_plugin_sdk::idle::*;

/// Settings.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// Local time zone as minutes east of UTC.
    pub utc_offset_minutes: i64,
    /// First working hour (0-23).
    pub start_hour: u64,
    /// First hour after work (1-24).
    pub end_hour: u64,
    /// Saturdays and Sundays are working days too.
    pub weekends: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { utc_offset_minutes: 0, start_hour: 8, end_hour: 18, weekends: false }
    }
}

/// The plugin.
pub struct BusinessHoursIdle;

impl Idle for BusinessHoursIdle {
    fn evaluate(request: IdleRequest) -> Result<IdleVerdict, PluginError> {
        Ok(decide(&request, &host::settings_json()?))
    }

    fn validate_settings(settings: &str) -> Result<(), PluginError> {
        let s: Settings = host::parse_settings(settings)?;
        if s.start_hour >= s.end_hour || s.end_hour > 24 {
            return Err(PluginError::InvalidSettings("need 0 <= start-hour < end-hour <= 24".into()));
        }
        Ok(())
    }
}

spawner_plugin_sdk::export!(idle: BusinessHoursIdle);

/// True when `now` (Unix seconds) is within working hours.
pub fn working_hours(now: u64, s: &Settings) -> bool {
    let local = now as i64 + s.utc_offset_minutes * 60;
    let days = local.div_euclid(86_400);
    let hour = (local.rem_euclid(86_400) / 3600) as u64;
    // 1970-01-01 was a Thursday: weekday 0 = Monday.
    let weekday = (days + 3).rem_euclid(7);
    (s.weekends || weekday < 5) && hour >= s.start_hour && hour < s.end_hour
}

/// The policy.
pub fn decide(request: &IdleRequest, settings: &Settings) -> IdleVerdict {
    if let Some(limit) = request.lifetime_limit_seconds.filter(|l| request.age_seconds >= *l) {
        return IdleVerdict::terminate_lifetime(format!("lifetime limit of {limit} s reached"));
    }
    if working_hours(request.now, settings) {
        return IdleVerdict::Keep;
    }
    let a = &request.activity;
    if a.open_connections == 0 && a.in_flight_requests == 0 && a.seconds_since_last_activity >= request.grace_period_seconds {
        return IdleVerdict::terminate_idle(format!("after hours and unused for {} s", a.seconds_since_last_activity));
    }
    IdleVerdict::Keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use spawner_plugin_sdk::testing::backend;

    // 2026-11-30 is a Monday.
    const MONDAY_10H: u64 = 1_795_996_800 + 10 * 3600;

    fn quiet(now: u64) -> IdleRequest {
        IdleRequest {
            backend: backend("b"),
            age_seconds: 100_000,
            grace_period_seconds: 300,
            lifetime_limit_seconds: None,
            activity: Activity {
                open_connections: 0,
                in_flight_requests: 0,
                seconds_since_last_activity: 10_000,
                bytes_in: 0,
                bytes_out: 0,
                websocket_messages: 0,
            },
            now,
        }
    }

    #[test]
    fn kept_during_working_hours_only() {
        let s = Settings::default();
        assert!(working_hours(MONDAY_10H, &s));
        assert_eq!(decide(&quiet(MONDAY_10H), &s), IdleVerdict::Keep);
        assert!(matches!(decide(&quiet(MONDAY_10H + 9 * 3600), &s), IdleVerdict::Terminate(_)));
        assert!(matches!(decide(&quiet(MONDAY_10H - 2 * 86_400), &s), IdleVerdict::Terminate(_)), "Saturday");
    }
}
