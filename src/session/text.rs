//! Turning token bytes into whole UTF-8 text pieces.
//!
//! A token may end in the middle of a multi-byte character. Callers (and C callbacks) must
//! only ever see whole characters, so each branch streams its bytes through a [`Utf8Stream`]
//! that holds back an incomplete tail until the next token completes it.

#[derive(Debug, Default, Clone)]
pub(crate) struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds bytes and appends to `out` every character that is now complete. Bytes that can
    /// never become valid UTF-8 are replaced by U+FFFD.
    pub(crate) fn push(&mut self, bytes: &[u8], out: &mut String) {
        self.pending.extend_from_slice(bytes);
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // SAFETY-free: from_utf8 just told us this prefix is valid.
                    out.push_str(std::str::from_utf8(&self.pending[start..start + valid]).unwrap_or(""));
                    start += valid;
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start += bad;
                        }
                        None => break, // incomplete tail: wait for more bytes
                    }
                }
            }
        }
        self.pending.drain(..start);
    }

    /// Emits whatever is held back (as U+FFFD) at the end of a stream.
    pub(crate) fn finish(&mut self, out: &mut String) {
        if !self.pending.is_empty() {
            out.push_str(&String::from_utf8_lossy(&self.pending));
            self.pending.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_characters_are_held_until_complete() {
        let mut s = Utf8Stream::default();
        let mut out = String::new();
        let euro = "€".as_bytes(); // 3 bytes
        s.push(b"a", &mut out);
        s.push(&euro[..1], &mut out);
        assert_eq!(out, "a");
        s.push(&euro[1..2], &mut out);
        assert_eq!(out, "a");
        s.push(&euro[2..], &mut out);
        assert_eq!(out, "a€");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut s = Utf8Stream::default();
        let mut out = String::new();
        s.push(&[b'x', 0xFF, b'y'], &mut out);
        assert_eq!(out, "x\u{FFFD}y");
        s.push(&[0xE2, 0x82], &mut out);
        s.finish(&mut out);
        assert_eq!(out, "x\u{FFFD}y\u{FFFD}");
    }
}
