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

#[cfg(test)]
mod tests {
    use super::*;

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
