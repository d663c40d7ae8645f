//! Bounding text whose length Spawner does not control (a backend's log
//! line, a plugin's message, an Event's note built from them) before it is
//! stored or sent where a size limit applies.

/// Cuts `text` to at most `max` bytes, ending on a character boundary and
/// with `marker` (which must be shorter than `max`) saying it was cut.
/// Text within `max` is left alone.
pub fn cut_to(text: &mut String, max: usize, marker: &str) {
    debug_assert!(marker.len() < max, "the marker must leave room for text");
    if text.len() <= max {
        return;
    }
    let mut cut = max.saturating_sub(marker.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(marker);
}

/// `text` with its control characters escaped as Rust writes them (`\n`,
/// `\r`, `\u{1b}`): for text from a plugin, which Spawner's log prints as
/// it is, where a newline would let a plugin forge a log line of its own.
pub fn escape_controls(text: &mut String) {
    if text.chars().any(char::is_control) {
        let mut out = String::with_capacity(text.len() + 16);
        for c in text.chars() {
            match c.is_control() {
                true => out.extend(c.escape_default()),
                false => out.push(c),
            }
        }
        *text = out;
    }
}

/// `text` written out with [`escape_controls`]: an error for a log line.
pub fn one_line(text: &dyn std::fmt::Display) -> String {
    let mut s = text.to_string();
    escape_controls(&mut s);
    s
}

/// The last few non-empty lines of `lines` (oldest first), joined with
/// " | ": at most `max_lines`, and at most `max` bytes (older lines are left
/// out first; a last line alone too long is cut). `None` when all are
/// empty. What a program wrote just before it exited usually says why: a
/// Python exception, a panic's message, a missing module.
pub fn last_words<'a>(lines: impl DoubleEndedIterator<Item = &'a str>, max_lines: usize, max: usize) -> Option<String> {
    let mut kept: Vec<&str> = Vec::new();
    let mut bytes = 0;
    let printable: Vec<String> = lines.rev().map(printable).collect();
    for line in printable.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
        if kept.len() == max_lines || (!kept.is_empty() && bytes + 3 + line.len() > max) {
            break;
        }
        bytes += line.len() + if kept.is_empty() { 0 } else { 3 };
        kept.push(line);
    }
    kept.reverse();
    let mut words = kept.join(" | ");
    cut_to(&mut words, max, "…");
    (!words.is_empty()).then_some(words)
}

/// `line` without terminal escape sequences (`ESC [ ... final`, colours;
/// `ESC ] ... BEL` or `ESC ] ... ESC \`, a window title or a link) or other
/// control characters, which would garble a terminal reading a status.
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            match chars.clone().next() {
                // A CSI sequence runs to its final byte, '@' to '~'.
                Some('[') => {
                    chars.next();
                    for f in chars.by_ref() {
                        if ('@'..='~').contains(&f) {
                            break;
                        }
                    }
                }
                // An OSC, DCS, APC, PM or SOS string runs to BEL or to ST
                // (`ESC \`); until 2026-12-01 only its ESC was removed.
                Some(']' | 'P' | '_' | '^' | 'X') => {
                    chars.next();
                    while let Some(f) = chars.next() {
                        if f == '\u{7}' || (f == '\u{1b}' && chars.clone().next() == Some('\\')) {
                            if f == '\u{1b}' {
                                chars.next();
                            }
                            break;
                        }
                    }
                }
                // Other escapes are ESC and one character (`ESC c`, `ESC 7`).
                Some(_) => {
                    chars.next();
                }
                None => {}
            }
        } else if !c.is_control() {
            out.push(c);
        }
    }
    out
}

/// serde's Rust type names in a message ("invalid value: integer `-1`,
/// expected u64") in words a user of the API or of the config file knows
/// ("expected a whole number, 0 or more").
pub fn plain_types(text: &str) -> String {
    let mut text = text.to_string();
    // An integer is an invalid i64 only when it is too large for one (the
    // config file's errors say the integer by its kind, not its digits).
    if text.contains("invalid value: integer") || text.contains("invalid value: an integer") {
        text = text.replace("expected i64", "expected a whole number up to 9223372036854775807");
        text = text.replace("expected u32", "expected a whole number from 0 to 4294967295");
    }
    const TYPES: &[(&str, &str)] = &[
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected u32", "expected a whole number, 0 or more"),
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected u16", "expected a whole number from 1 to 65535"),
        ("expected i64", "expected a whole number"),
        ("expected a boolean", "expected true or false"),
        ("invalid digit found in string", "expected a whole number, 0 or more"),
        ("number too large to fit in target type", "the number is too large"),
    ];
    for (from, to) in TYPES {
        text = text.replace(from, to);
    }
    text
}

/// serde's "expected struct Resources" (or "… with 2 elements", for a
/// struct given as an array) names a Rust type: each becomes "expected
/// {what}", in the words of the format the user wrote (a JSON object, a
/// TOML table).
pub fn name_structs_as(text: &str, what: &str) -> String {
    const STRUCT: &str = "expected struct ";
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(STRUCT) {
        out.push_str(&rest[..at]);
        out.push_str("expected ");
        out.push_str(what);
        rest = rest[at + STRUCT.len()..].trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '_');
        if let Some(count) = rest.strip_prefix(" with ")
            && let Some(after) = count.trim_start_matches(|c: char| c.is_ascii_digit()).strip_prefix(" element")
            && count.starts_with(|c: char| c.is_ascii_digit())
        {
            rest = after.strip_prefix('s').unwrap_or(after);
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_names_become_the_formats_words() {
        assert_eq!(
            name_structs_as("resources: invalid type: null, expected struct Resources at line 1 column 37", "a JSON object"),
            "resources: invalid type: null, expected a JSON object at line 1 column 37"
        );
        assert_eq!(
            name_structs_as("resources: invalid length 0, expected struct Resources with 2 elements at line 1", "a JSON object"),
            "resources: invalid length 0, expected a JSON object at line 1"
        );
        assert_eq!(
            name_structs_as("invalid type: string \"x\", expected struct PluginSlot", "a table"),
            "invalid type: string \"x\", expected a table"
        );
        assert_eq!(name_structs_as("expected a string", "a table"), "expected a string");
    }

    #[test]
    fn last_words_keep_the_newest_lines_within_the_limits() {
        let panic = ["starting", "thread 'main' panicked at src/main.rs:2:5:", "boom", "", "note: run with `RUST_BACKTRACE=1`"];
        assert_eq!(
            last_words(panic.into_iter(), 3, 300).as_deref(),
            Some("thread 'main' panicked at src/main.rs:2:5: | boom | note: run with `RUST_BACKTRACE=1`"),
            "three lines, empty ones skipped"
        );
        assert_eq!(last_words(panic.into_iter(), 3, 39).as_deref(), Some("note: run with `RUST_BACKTRACE=1`"), "older lines go first");
        assert_eq!(last_words(panic.into_iter(), 3, 40).as_deref(), Some("boom | note: run with `RUST_BACKTRACE=1`"), "to the byte");
        let long = "x".repeat(500);
        let words = last_words([long.as_str()].into_iter(), 3, 300).unwrap();
        assert!(words.len() <= 300 && words.ends_with('…'), "{words}");
        assert_eq!(last_words(["", "  "].into_iter(), 3, 300), None);
        assert_eq!(last_words(["\u{1b}[31merror\u{1b}[0m: no\r"].into_iter(), 3, 300).as_deref(), Some("error: no"), "no escapes");
        let osc = "\u{1b}[31mERROR\u{1b}[0m \u{1b}]0;title\u{7}bad \u{1b}]8;;http://x\u{1b}\\link\u{1b}]8;;\u{1b}\\ \u{1b}cthing";
        assert_eq!(last_words([osc].into_iter(), 3, 300).as_deref(), Some("ERROR bad link thing"), "titles and links go whole");
    }

    #[test]
    fn control_characters_are_escaped_so_text_stays_on_one_line() {
        let mut forged = "bye\n2026-12-01T00:00:00Z  INFO forged\r\u{1b}[2K".to_string();
        escape_controls(&mut forged);
        assert_eq!(forged, "bye\\n2026-12-01T00:00:00Z  INFO forged\\r\\u{1b}[2K");
        let mut plain = "plain – text".to_string();
        escape_controls(&mut plain);
        assert_eq!(plain, "plain – text");
    }

    #[test]
    fn long_text_ends_with_the_marker_within_the_limit_on_a_char_boundary() {
        let mut short = "héllo".to_string();
        cut_to(&mut short, 6, "…");
        assert_eq!(short, "héllo", "6 bytes fit");
        let mut long = "é".repeat(10);
        cut_to(&mut long, 8, "…");
        // 8 - 3 bytes for the marker = 5, down to a boundary: 4 (two é).
        assert_eq!(long, "éé…");
        assert!(long.len() <= 8);
    }
}
