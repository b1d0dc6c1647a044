//! The GBNF parser: `llama_grammar_parser`'s parse functions, byte for byte.

use super::{el, is_digit, is_word_char, Elem, Parser, Refusal, Res, Ty, MAX_NESTING, MAX_REPETITION};

impl<'a> Parser<'a> {
    fn parse_space(&self, mut pos: usize, newline_ok: bool) -> usize {
        loop {
            let c = self.at(pos);
            if c == b'#' {
                while self.at(pos) != 0 && self.at(pos) != b'\r' && self.at(pos) != b'\n' {
                    pos += 1;
                }
            } else if c == b' ' || c == b'\t' || (newline_ok && (c == b'\r' || c == b'\n')) {
                pos += 1;
            } else {
                return pos;
            }
        }
    }

    fn parse_name(&self, src: usize) -> Res<usize> {
        let mut pos = src;
        while is_word_char(self.at(pos)) {
            pos += 1;
        }
        if pos == src {
            return self.refuse(src, "expecting a rule name");
        }
        Ok(pos)
    }

    fn parse_int(&self, src: usize) -> Res<usize> {
        let mut pos = src;
        while is_digit(self.at(pos)) {
            pos += 1;
        }
        if pos == src {
            return self.refuse(src, "expecting an integer");
        }
        Ok(pos)
    }

    /// std::stoull of a run of digits: out of range past u64.
    fn parse_u64(&self, src: usize, end: usize) -> Res<u64> {
        let mut v: u64 = 0;
        for &d in &self.s[src..end] {
            v = match v.checked_mul(10).and_then(|v| v.checked_add(u64::from(d - b'0'))) {
                Some(v) => v,
                None => return self.refuse(src, "number out of range"),
            };
        }
        Ok(v)
    }

    fn parse_hex(&self, src: usize, size: usize) -> Res<(u32, usize)> {
        let end = src + size;
        let mut pos = src;
        let mut value: u32 = 0;
        while pos < end && self.at(pos) != 0 {
            let c = self.at(pos);
            let digit = match c {
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                b'0'..=b'9' => c - b'0',
                _ => break,
            };
            value = (value << 4).wrapping_add(u32::from(digit));
            pos += 1;
        }
        if pos != end {
            return self.refuse(src, &format!("expecting {size} hex digits"));
        }
        Ok((value, pos))
    }

    /// One UTF-8 sequence (llama.cpp's lenient `decode_utf8(const char *)`).
    fn decode_utf8(&self, src: usize) -> (u32, usize) {
        const LOOKUP: [usize; 16] = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4];
        let first = self.at(src);
        let len = LOOKUP[usize::from(first >> 4)];
        let mask = (1u32 << (8 - len)) - 1;
        let mut value = u32::from(first) & mask;
        let end = src + len;
        let mut pos = src + 1;
        while pos < end && self.at(pos) != 0 {
            value = (value << 6).wrapping_add(u32::from(self.at(pos) & 0x3F));
            pos += 1;
        }
        (value, pos)
    }

    fn parse_char(&self, src: usize) -> Res<(u32, usize)> {
        if self.at(src) == b'\\' {
            return match self.at(src + 1) {
                b'x' => self.parse_hex(src + 2, 2),
                b'u' => self.parse_hex(src + 2, 4),
                b'U' => self.parse_hex(src + 2, 8),
                b't' => Ok((u32::from(b'\t'), src + 2)),
                b'r' => Ok((u32::from(b'\r'), src + 2)),
                b'n' => Ok((u32::from(b'\n'), src + 2)),
                c @ (b'\\' | b'"' | b'[' | b']' | b'-') => Ok((u32::from(c), src + 2)),
                _ => self.refuse(src, "unknown escape"),
            };
        }
        if self.at(src) != 0 {
            return Ok(self.decode_utf8(src));
        }
        self.refuse(src, "unexpected end of input")
    }

    fn parse_token(&mut self, src: usize) -> Res<(u32, usize)> {
        let mut pos = src;
        if self.at(pos) != b'<' {
            return self.refuse(pos, "expecting '<'");
        }
        pos += 1;
        if self.at(pos) == b'[' {
            pos += 1;
            let int_end = self.parse_int(pos)?;
            let id = self.parse_u64(pos, int_end)?;
            let Ok(id) = u32::try_from(id) else {
                return self.refuse(pos, "token id too big");
            };
            pos = int_end;
            if self.at(pos) != b']' {
                return self.refuse(pos, "expecting ']'");
            }
            pos += 1;
            if self.at(pos) != b'>' {
                return self.refuse(pos, "expecting '>'");
            }
            return Ok((id, pos + 1));
        }
        while self.at(pos) != 0 && self.at(pos) != b'>' {
            pos += 1;
        }
        if self.at(pos) != b'>' {
            return self.refuse(pos, "expecting '>'");
        }
        pos += 1;
        let s = self.s;
        match (self.token_id)(&s[src..pos]) {
            Ok(id) => Ok((id, pos)),
            Err(why) => self.refuse(src, &why),
        }
    }

    /// llama.cpp's `handle_repetitions` (llama-grammar.cpp:442–532), with its wrap-around
    /// on `{m,n}`, n < m, refused first.
    #[allow(clippy::too_many_arguments)]
    fn repeat(
        &mut self,
        pos: usize,
        rule: &mut Vec<Elem>,
        last_sym_start: usize,
        n_prev_rules: &mut u64,
        rule_name: &[u8],
        min: u64,
        max: u64,
    ) -> Res<()> {
        let no_max = max == u64::MAX;
        if last_sym_start == rule.len() {
            return self.refuse(pos, "expecting an item before */+/?/{");
        }
        if !no_max && max < min {
            // llama.cpp's `max - min` would wrap and generate rules until memory runs out.
            let message = self.located(pos, &format!("repetition {{{min},{max}}} has its maximum below its minimum"));
            return Err(Refusal { message, limit: true });
        }
        let prev: Vec<Elem> = rule[last_sym_start..].to_vec();
        let total_rules = if !no_max && max > 0 {
            max
        } else if min > 0 {
            min
        } else {
            1
        };
        if n_prev_rules.saturating_mul(total_rules) > MAX_REPETITION {
            return self.refuse(pos, "the repetition, times the rules it repeats, exceeds llama.cpp's limit of 2000");
        }
        let n_opt = if no_max { 1 } else { max - min };
        let copies = min.saturating_sub(1).saturating_mul(prev.len() as u64);
        let optional = n_opt.saturating_mul(prev.len() as u64 + 3);
        self.grow(copies.saturating_add(optional))?;
        if min == 0 {
            rule.truncate(last_sym_start);
        } else {
            for _ in 1..min {
                rule.extend_from_slice(&prev);
            }
        }
        let mut last_rec_rule_id = 0;
        let mut rec_rule = prev.clone();
        for i in 0..n_opt {
            rec_rule.truncate(prev.len());
            let rec_rule_id = self.generate_symbol_id(rule_name);
            if i > 0 || no_max {
                rec_rule.push(el(Ty::RuleRef, if no_max { rec_rule_id } else { last_rec_rule_id }));
            }
            rec_rule.push(el(Ty::Alt, 0));
            rec_rule.push(el(Ty::End, 0));
            self.add_rule(rec_rule_id, rec_rule.clone());
            last_rec_rule_id = rec_rule_id;
        }
        if n_opt > 0 {
            rule.push(el(Ty::RuleRef, last_rec_rule_id));
        }
        *n_prev_rules = n_prev_rules.saturating_mul(total_rules);
        Ok(())
    }

    fn parse_sequence(
        &mut self,
        src: usize,
        rule_name: &[u8],
        rule: &mut Vec<Elem>,
        is_nested: bool,
        depth: usize,
    ) -> Res<usize> {
        let mut last_sym_start = rule.len();
        let mut pos = src;
        let mut n_prev_rules: u64 = 1;
        while self.at(pos) != 0 {
            let c = self.at(pos);
            if c == b'"' {
                pos += 1;
                last_sym_start = rule.len();
                n_prev_rules = 1;
                while self.at(pos) != b'"' {
                    if self.at(pos) == 0 {
                        return self.refuse(pos, "unexpected end of input (an unterminated string)");
                    }
                    let (ch, next) = self.parse_char(pos)?;
                    pos = next;
                    self.push(rule, el(Ty::Char, ch))?;
                }
                pos = self.parse_space(pos + 1, is_nested);
            } else if c == b'[' {
                pos += 1;
                let mut start_type = Ty::Char;
                if self.at(pos) == b'^' {
                    pos += 1;
                    start_type = Ty::CharNot;
                }
                last_sym_start = rule.len();
                n_prev_rules = 1;
                while self.at(pos) != b']' {
                    if self.at(pos) == 0 {
                        return self.refuse(pos, "unexpected end of input (an unterminated [...])");
                    }
                    let (ch, next) = self.parse_char(pos)?;
                    pos = next;
                    let ty = if last_sym_start < rule.len() { Ty::CharAlt } else { start_type };
                    self.push(rule, el(ty, ch))?;
                    if self.at(pos) == b'-' && self.at(pos + 1) != b']' {
                        if self.at(pos + 1) == 0 {
                            return self.refuse(pos + 1, "unexpected end of input (an unterminated [...])");
                        }
                        let (end_ch, next) = self.parse_char(pos + 1)?;
                        pos = next;
                        self.push(rule, el(Ty::CharRngUpper, end_ch))?;
                    }
                }
                pos = self.parse_space(pos + 1, is_nested);
            } else if c == b'<' || c == b'!' {
                let mut ty = Ty::Token;
                if c == b'!' {
                    ty = Ty::TokenNot;
                    pos += 1;
                }
                let (id, token_end) = self.parse_token(pos)?;
                last_sym_start = rule.len();
                n_prev_rules = 1;
                self.push(rule, el(ty, id))?;
                pos = self.parse_space(token_end, is_nested);
            } else if is_word_char(c) {
                let name_end = self.parse_name(pos)?;
                let name = self.s[pos..name_end].to_vec();
                let ref_rule_id = self.get_symbol_id(&name);
                pos = self.parse_space(name_end, is_nested);
                last_sym_start = rule.len();
                n_prev_rules = 1;
                self.push(rule, el(Ty::RuleRef, ref_rule_id))?;
            } else if c == b'(' {
                if depth >= MAX_NESTING {
                    let message = self.located(pos, &format!("groups nested deeper than {MAX_NESTING}"));
                    return Err(Refusal { message, limit: true });
                }
                pos = self.parse_space(pos + 1, true);
                let n_rules_before = self.symbols.len() as u32;
                let sub_rule_id = self.generate_symbol_id(rule_name);
                pos = self.parse_alternates(pos, rule_name, sub_rule_id, true, depth + 1)?;
                n_prev_rules = u64::from((self.symbols.len() as u32).wrapping_sub(n_rules_before).max(1));
                last_sym_start = rule.len();
                self.push(rule, el(Ty::RuleRef, sub_rule_id))?;
                if self.at(pos) != b')' {
                    return self.refuse(pos, "expecting ')'");
                }
                pos = self.parse_space(pos + 1, is_nested);
            } else if c == b'.' {
                last_sym_start = rule.len();
                n_prev_rules = 1;
                self.push(rule, el(Ty::CharAny, 0))?;
                pos = self.parse_space(pos + 1, is_nested);
            } else if c == b'*' || c == b'+' || c == b'?' {
                let at = pos;
                pos = self.parse_space(pos + 1, is_nested);
                let (min, max) = match c {
                    b'*' => (0, u64::MAX),
                    b'+' => (1, u64::MAX),
                    _ => (0, 1),
                };
                self.repeat(at, rule, last_sym_start, &mut n_prev_rules, rule_name, min, max)?;
            } else if c == b'{' {
                let at = pos;
                pos = self.parse_space(pos + 1, is_nested);
                if !is_digit(self.at(pos)) {
                    return self.refuse(pos, "expecting an integer");
                }
                let int_end = self.parse_int(pos)?;
                let min = self.parse_u64(pos, int_end)?;
                pos = self.parse_space(int_end, is_nested);
                let mut max = u64::MAX;
                if self.at(pos) == b'}' {
                    max = min;
                    pos = self.parse_space(pos + 1, is_nested);
                } else if self.at(pos) == b',' {
                    pos = self.parse_space(pos + 1, is_nested);
                    if is_digit(self.at(pos)) {
                        let int_end = self.parse_int(pos)?;
                        max = self.parse_u64(pos, int_end)?;
                        pos = self.parse_space(int_end, is_nested);
                    }
                    if self.at(pos) != b'}' {
                        return self.refuse(pos, "expecting '}'");
                    }
                    pos = self.parse_space(pos + 1, is_nested);
                } else {
                    return self.refuse(pos, "expecting ','");
                }
                if min > MAX_REPETITION {
                    return self.refuse(at, "more than 2000 repetitions (llama.cpp's limit)");
                }
                if max != u64::MAX && max > MAX_REPETITION {
                    max = u64::MAX;
                }
                self.repeat(at, rule, last_sym_start, &mut n_prev_rules, rule_name, min, max)?;
            } else {
                break;
            }
        }
        Ok(pos)
    }

    fn parse_alternates(
        &mut self,
        src: usize,
        rule_name: &[u8],
        rule_id: u32,
        is_nested: bool,
        depth: usize,
    ) -> Res<usize> {
        let mut rule = Vec::new();
        let mut pos = self.parse_sequence(src, rule_name, &mut rule, is_nested, depth)?;
        while self.at(pos) == b'|' {
            self.push(&mut rule, el(Ty::Alt, 0))?;
            pos = self.parse_space(pos + 1, true);
            pos = self.parse_sequence(pos, rule_name, &mut rule, is_nested, depth)?;
        }
        self.push(&mut rule, el(Ty::End, 0))?;
        self.add_rule(rule_id, rule);
        Ok(pos)
    }

    fn parse_rule(&mut self, src: usize) -> Res<usize> {
        let name_end = self.parse_name(src)?;
        let mut pos = self.parse_space(name_end, false);
        let name = self.s[src..name_end].to_vec();
        let rule_id = self.get_symbol_id(&name);
        if !(self.at(pos) == b':' && self.at(pos + 1) == b':' && self.at(pos + 2) == b'=') {
            return self.refuse(pos, "expecting ::=");
        }
        pos = self.parse_space(pos + 3, true);
        pos = self.parse_alternates(pos, &name, rule_id, false, 0)?;
        if self.at(pos) == b'\r' {
            pos += if self.at(pos + 1) == b'\n' { 2 } else { 1 };
        } else if self.at(pos) == b'\n' {
            pos += 1;
        } else if self.at(pos) != 0 {
            return self.refuse(pos, "expecting a newline or the end");
        }
        Ok(self.parse_space(pos, true))
    }

    /// `llama_grammar_parser::parse`, its validation included.
    pub(super) fn parse(&mut self) -> Res<()> {
        let mut pos = self.parse_space(0, true);
        while self.at(pos) != 0 {
            pos = self.parse_rule(pos)?;
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.is_empty() {
                let name = self.name_of(i as u32).unwrap_or_else(|| format!("#{i}"));
                return Err(Refusal { message: format!("rule '{name}' is used but never defined"), limit: false });
            }
            for e in rule {
                if e.ty == Ty::RuleRef
                    && (e.value as usize >= self.rules.len() || self.rules[e.value as usize].is_empty())
                {
                    let name = self.name_of(e.value).unwrap_or_else(|| format!("#{}", e.value));
                    return Err(Refusal { message: format!("rule '{name}' is used but never defined"), limit: false });
                }
            }
        }
        Ok(())
    }
}
