//! Stop strings: whether the token just sampled completes one, across token boundaries.

use super::StopReason;

/// Whether appending `piece` to `text` completes one of `stops` (only matches that end inside
/// the new piece count, so a stop string is reported once, at the token that completes it).
///
/// A stop string made only of whitespace (say "\n") does not match while the run has written
/// nothing but whitespace: a point or paragraph that starts on a new line has not ended.
/// Whether `piece` completes a stop string over the run's `text` (and, before it, the forced
/// `lookback`). A whitespace-only stop fires only once the run wrote something else.
pub(super) fn stop_string_hit(lookback: &[u8], text: &[u8], piece: &[u8], stops: &[String]) -> Option<StopReason> {
    for stop in stops {
        let s = stop.as_bytes();
        if s.is_empty() {
            continue;
        }
        if s.iter().all(u8::is_ascii_whitespace) && !text.iter().chain(piece).any(|b| !b.is_ascii_whitespace()) {
            continue;
        }
        let keep = (s.len() - 1).min(text.len());
        let from_lookback = (s.len() - 1 - keep).min(lookback.len());
        let mut window = Vec::with_capacity(s.len() - 1 + piece.len());
        window.extend_from_slice(&lookback[lookback.len() - from_lookback..]);
        window.extend_from_slice(&text[text.len() - keep..]);
        window.extend_from_slice(piece);
        if window.windows(s.len()).any(|w| w == s) {
            return Some(StopReason::StopString(stop.clone()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn stop_strings_match_across_token_boundaries_once() {
        let stops = vec!["</Path>".to_string()];
        assert_eq!(
            stop_string_hit(b"", b"abc</Pa", b"th> more", &stops),
            Some(StopReason::StopString("</Path>".into()))
        );
        assert_eq!(stop_string_hit(b"", b"</Path> x", b"y", &stops), None);
        assert_eq!(stop_string_hit(b"", b"", b"</Path>", &stops), Some(StopReason::StopString("</Path>".into())));
        // A stop begun in forced text before the run; one wholly inside it does not fire.
        assert_eq!(stop_string_hit(b"x</Pa", b"", b"th>", &stops), Some(StopReason::StopString("</Path>".into())));
        assert_eq!(stop_string_hit(b"</Path>", b"", b"x", &stops), None);
        assert_eq!(stop_string_hit(b"", b"abc", b"def", &[String::new()]), None);
        // Whitespace-only stops wait for content.
        let nl = vec!["\n".to_string()];
        assert_eq!(stop_string_hit(b"", b" ", b"\n", &nl), None);
        assert_eq!(stop_string_hit(b"", b" x", b"\n", &nl), Some(StopReason::StopString("\n".into())));
    }
}
