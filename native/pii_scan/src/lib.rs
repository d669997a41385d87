//! The PII detectors of `privatellm.filters.detectors`, compiled.
//!
//! Python keeps the definitions: it passes each detector's pattern, trigger, gate
//! and reach here, and this module runs the same scan (`filters/scanner.py`) with PCRE2
//! and the confirmation rules written again in Rust. Offsets in and out are code
//! points, as in Python. Inside, every detector but the lowered one (dates of
//! birth) reads a copy of the text with one byte per character, so byte offsets
//! are code points; the lowered one reads the lower-cased text as UTF-8.
//! `tests/unit/test_pii_native.py` checks that both scans agree.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;

use aho_corasick::AhoCorasick;
use pcre2::bytes::{CaptureLocations, Regex, RegexBuilder};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyString;

mod checksums;
mod gates;

use checksums::{
    de_tax_id_valid, iban_length, iban_valid, ipv4_valid, ipv6_valid, nl_bsn_valid, number,
    payment_card_valid, shannon_entropy, uk_nino_valid, us_ssn_valid,
};
use gates::Gate;

type Span = (usize, usize);

// --- compiling ---------------------------------------------------------------

/// Compiles a pattern of the Python scanner: for text as one byte per character
/// (plain bytes, no UTF-8 check on each call), or `for_utf8` text.
fn compile(pattern: &str, verbose: bool, unicode: bool, for_utf8: bool) -> PyResult<Regex> {
    // Python's [^\W\d_] (a letter) reads as PCRE2's \w without digits and
    // underscore, but PCRE2's \w also takes combining marks; name the categories.
    let pattern = pattern.replace(r"[^\W\d_]", r"[\p{L}\p{Nl}\p{No}]");
    RegexBuilder::new()
        .utf(for_utf8)
        .ucp(for_utf8 && unicode)
        .extended(verbose)
        .jit_if_available(true)
        .build(&pattern)
        .map_err(|e| PyValueError::new_err(format!("pattern {pattern:?}: {e}")))
}

/// A pattern of this module's own, for the one-byte-per-character text.
fn fixed(pattern: &str) -> Regex {
    compile(pattern, false, false, false).expect("a fixed pattern compiles")
}

/// A detector's pattern: for the one-byte-per-character text, and for the
/// lower-cased text as UTF-8 when the detector is a lowered one.
struct Pattern {
    ascii: Regex,
    utf: Option<Regex>,
}

impl Pattern {
    fn new(pattern: &str, verbose: bool, unicode: bool, lowered: bool) -> PyResult<Self> {
        Ok(Pattern {
            ascii: compile(pattern, verbose, unicode, false)?,
            utf: if lowered {
                Some(compile(pattern, verbose, unicode, true)?)
            } else {
                None
            },
        })
    }

    /// For an ASCII subject, or the lowered UTF-8 one.
    fn on(&self, ascii: bool) -> &Regex {
        match (&self.utf, ascii) {
            (Some(utf), false) => utf,
            _ => &self.ascii,
        }
    }
}

fn group_index(regex: &Regex, name: &str) -> PyResult<usize> {
    regex
        .capture_names()
        .iter()
        .position(|n| n.as_deref() == Some(name))
        .ok_or_else(|| PyValueError::new_err(format!("no group {name:?} in {}", regex.as_str())))
}

// --- text helpers --------------------------------------------------------------

/// (end offset, digits so far) at each end of a digit group, longest first.
fn group_prefixes(text: &[u8]) -> Vec<(usize, Vec<u8>)> {
    let mut prefixes = Vec::new();
    let mut digits = Vec::new();
    let mut i = 0;
    while i < text.len() {
        if text[i].is_ascii_digit() {
            while i < text.len() && text[i].is_ascii_digit() {
                digits.push(text[i]);
                i += 1;
            }
            prefixes.push((i, digits.clone()));
        } else {
            i += 1;
        }
    }
    prefixes.reverse();
    prefixes
}

fn digits_of(text: &[u8]) -> Vec<u8> {
    text.iter().copied().filter(u8::is_ascii_digit).collect()
}

fn count_of(haystack: &[u8], needle: &[u8]) -> usize {
    let (mut count, mut at) = (0, 0);
    while at + needle.len() <= haystack.len() {
        if &haystack[at..at + needle.len()] == needle {
            count += 1;
            at += needle.len();
        } else {
            at += 1;
        }
    }
    count
}

/// The character that ends at byte offset `at` (there is one when at > 0).
fn char_before(text: &str, at: usize) -> char {
    text[..at]
        .chars()
        .next_back()
        .expect("a character before a positive offset")
}

/// Python's own `str.isalnum()` for characters outside ASCII, asked once per
/// character: the same Unicode data as the Python scanner, so both agree on every
/// character (Rust's `is_alphanumeric` also takes marks such as U+0345).
struct PythonAlnum {
    known: Mutex<HashMap<char, bool>>,
}

/// Characters remembered at most; past that each is asked again (still right).
const ALNUM_CACHE: usize = 1 << 16;

impl PythonAlnum {
    fn new() -> Self {
        PythonAlnum {
            known: Mutex::new(HashMap::new()),
        }
    }

    fn of(&self, py: Python<'_>, c: char) -> bool {
        if c.is_ascii() {
            return c.is_ascii_alphanumeric();
        }
        let mut known = self.known.lock().expect("no panic while holding the cache");
        if let Some(&answer) = known.get(&c) {
            return answer;
        }
        let answer = PyString::new(py, c.encode_utf8(&mut [0; 4]))
            .call_method0("isalnum")
            .and_then(|result| result.extract::<bool>())
            .unwrap_or(false);
        if known.len() < ALNUM_CACHE {
            known.insert(c, answer);
        }
        answer
    }
}

fn lower_same_length(text: &str) -> String {
    if text.is_ascii() {
        return text.to_ascii_lowercase();
    }
    let mut lower = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\u{130}' {
            lower.push('i');
        } else {
            lower.extend(c.to_lowercase());
        }
    }
    lower
}

/// Byte offset <-> code point index of one text; the identity for ASCII.
struct Offsets {
    /// Byte offset of each code point index, plus the length; empty for ASCII.
    bytes_of: Vec<usize>,
    len_bytes: usize,
}

impl Offsets {
    fn identity(len: usize) -> Self {
        Offsets {
            bytes_of: Vec::new(),
            len_bytes: len,
        }
    }

    fn new(text: &str, ascii: bool) -> Self {
        let bytes_of = if ascii {
            Vec::new()
        } else {
            text.char_indices()
                .map(|(i, _)| i)
                .chain([text.len()])
                .collect()
        };
        Offsets {
            bytes_of,
            len_bytes: text.len(),
        }
    }

    fn byte(&self, index: usize) -> usize {
        if self.bytes_of.is_empty() {
            index.min(self.len_bytes)
        } else {
            self.bytes_of[index.min(self.bytes_of.len() - 1)]
        }
    }

    fn index(&self, byte: usize) -> usize {
        if self.bytes_of.is_empty() {
            byte
        } else {
            self.bytes_of.partition_point(|&b| b < byte)
        }
    }
}

// --- detectors -----------------------------------------------------------------

enum Kind {
    Email {
        domain: Regex,
    },
    Phone {
        shapes: Vec<(usize, usize, usize)>,
        trunk: usize,
        date_shaped: Regex,
    },
    Card,
    UsSsn {
        area: usize,
        group: usize,
        serial: usize,
    },
    UkNino,
    NlBsn,
    DeTaxId,
    Iban,
    Ipv4,
    Ipv6 {
        body: Regex,
    },
    DateOfBirth {
        date: usize,
    },
    Token {
        known_keys: Regex,
    },
    Whole,
}

struct Detector {
    kind: Kind,
    /// Searches (a detector alone) or matches at a trigger's hit (a family member).
    pattern: Pattern,
    back: usize,
    lead: usize,
    lowered: bool,
    keywords: Vec<String>,
    gate: Gate,
    needs_groups: bool,
}

struct Family {
    trigger: Regex,
    gate: Gate,
    back: usize,
    members: Vec<usize>,
}

fn kind_of(name: &str, pattern: &Regex) -> PyResult<Kind> {
    Ok(match name {
        "email" => Kind::Email {
            domain: fixed(r"\G[A-Za-z0-9](?:[A-Za-z0-9.\-]{0,98}[A-Za-z0-9])?(?![A-Za-z0-9\-])"),
        },
        "phone" => {
            let limits = [
                ("intl", 8, 15),
                ("intl00", 10, 17),
                ("trunk", 9, 11),
                ("paren", 9, 11),
                ("nanp", 10, 10),
                ("es", 9, 9),
            ];
            let mut shapes = Vec::new();
            for (shape, low, high) in limits {
                shapes.push((group_index(pattern, shape)?, low, high));
            }
            Kind::Phone {
                shapes,
                trunk: group_index(pattern, "trunk")?,
                date_shaped: fixed(
                    r"\G(?:0?[1-9]|[12][0-9]|3[01])([./\-])(?:0?[1-9]|1[0-2])\1[0-9]{2,4}",
                ),
            }
        }
        "paymentCard" => Kind::Card,
        "usSSN" => Kind::UsSsn {
            area: group_index(pattern, "area")?,
            group: group_index(pattern, "group")?,
            serial: group_index(pattern, "serial")?,
        },
        "ukNINO" => Kind::UkNino,
        "nlBSN" => Kind::NlBsn,
        "deTaxID" => Kind::DeTaxId,
        "iban" => Kind::Iban,
        "ipv4" => Kind::Ipv4,
        "ipv6" => Kind::Ipv6 {
            body: fixed(
                r"\G[0-9A-Fa-f:]{2,39}(?:(?<=:)[0-9]{1,3}(?:\.[0-9]{1,3}){3})?(?![0-9A-Za-z_:]|\.[0-9])",
            ),
        },
        "dateOfBirth" => Kind::DateOfBirth {
            date: group_index(pattern, "date")?,
        },
        "secretToken" => Kind::Token {
            known_keys: fixed(
                r"\G(?:(?:AKIA|ASIA)[A-Z0-9]{16}|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}|xox[abposr]-[A-Za-z0-9\-]{10,}|[sr]k_live_[A-Za-z0-9]{24,}|AIza[A-Za-z0-9_\-]{35})",
            ),
        },
        "whole" => Kind::Whole,
        _ => {
            return Err(PyValueError::new_err(format!(
                "unknown detector kind {name:?}"
            )))
        }
    })
}

fn is_high_entropy(token: &[u8]) -> bool {
    if !(token.iter().any(u8::is_ascii_lowercase) && token.iter().any(u8::is_ascii_uppercase)) {
        return false;
    }
    let class = |c: u8| match c {
        b'a'..=b'z' => 0,
        b'A'..=b'Z' => 1,
        b'0'..=b'9' => 2,
        _ => 3,
    };
    let switches = token
        .windows(2)
        .filter(|w| class(w[0]) != class(w[1]))
        .count();
    if (switches as f64) < 0.35 * (token.len() - 1) as f64 {
        return false;
    }
    let threshold = f64::min(4.0, 0.8 * (token.len() as f64).log2());
    shannon_entropy(token) >= threshold
}

fn locate_email(text: &str, at: usize, domain: &Regex) -> Option<Span> {
    let bytes = text.as_bytes();
    let is_local = |c: u8| c.is_ascii_alphanumeric() || b"._%+-".contains(&c);
    let mut run = at;
    while run > 0 && is_local(bytes[run - 1]) && at - run < 64 {
        run -= 1;
    }
    if run == at || (run > 0 && is_local(bytes[run - 1])) {
        return None;
    }
    let mut start = run;
    while bytes[start] == b'.' {
        start += 1;
    }
    if start == at || bytes[at - 1] == b'.' || bytes[start..at].windows(2).any(|w| w == b"..") {
        return None;
    }
    let found = domain.find_at(bytes, at + 1).ok()??;
    let labels: Vec<&[u8]> = found.as_bytes().split(|&c| c == b'.').collect();
    let last = labels[labels.len() - 1];
    if labels.len() < 2 || last.len() < 2 || !last.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    let label_ok = |l: &[u8]| {
        !l.is_empty()
            && l.len() <= 63
            && l[0].is_ascii_alphanumeric()
            && l[l.len() - 1].is_ascii_alphanumeric()
            && l.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
    };
    labels
        .iter()
        .all(|l| label_ok(l))
        .then_some((start, found.end()))
}

fn locate_phone(
    matched: &[u8],
    start: usize,
    (shape, low, high): (usize, usize, usize),
    trunk: usize,
    date_shaped: &Regex,
) -> Option<Span> {
    if shape == trunk && date_shaped.is_match(matched).unwrap_or(false) {
        return None;
    }
    for (end, digits) in group_prefixes(matched) {
        // "+31 (0)20 ...": the trunk 0 in brackets is not dialled from abroad
        let count = digits.len() - count_of(&matched[..end], b"(0)");
        if low <= count && count <= high {
            return Some((start, start + end));
        }
    }
    None
}

fn locate_iban(text: &[u8], start: usize, matched: &[u8]) -> Option<Span> {
    let expected = iban_length(&matched[..2])?;
    let mut count = 0;
    for (offset, &c) in matched.iter().enumerate() {
        if c != b' ' {
            count += 1;
        }
        if count == expected {
            let end = start + offset + 1;
            if text
                .get(end)
                .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_')
            {
                return None;
            }
            let compact: Vec<u8> = matched[..=offset]
                .iter()
                .copied()
                .filter(|&c| c != b' ')
                .collect();
            return iban_valid(&compact).then_some((start, end));
        }
    }
    None
}

fn locate_ipv6(text: &str, colon: usize, body: &Regex) -> Option<Span> {
    let bytes = text.as_bytes();
    let mut start = colon;
    while start > 0 && colon - start < 4 && bytes[start - 1].is_ascii_hexdigit() {
        start -= 1;
    }
    // The text is ASCII here, other characters mapped to ALNUM or OTHER.
    if start > 0
        && (bytes[start - 1].is_ascii_alphanumeric() || b":._\x01".contains(&bytes[start - 1]))
    {
        return None;
    }
    let found = body.find_at(bytes, start).ok()??;
    let mut address = found.as_bytes();
    if address.ends_with(b":") && !address.ends_with(b"::") {
        address = &address[..address.len() - 1];
    }
    if count_of(address, b":") < 2 || !ipv6_valid(address) {
        return None;
    }
    Some((start, start + address.len()))
}

fn plausible_date(date: &str) -> bool {
    let numbers: Vec<u64> = date
        .as_bytes()
        .split(|c| !c.is_ascii_digit())
        .filter(|n| !n.is_empty())
        .map(number)
        .collect();
    let first_alpha = date.chars().next().is_some_and(char::is_alphabetic);
    if numbers.len() == 3 && !first_alpha && !date.contains(' ') {
        let (mut first, second) = (numbers[0], numbers[1]);
        if numbers[0] >= 1900 {
            first = numbers[2];
        }
        return ((1..=31).contains(&first) && (1..=12).contains(&second))
            || ((1..=31).contains(&second) && (1..=12).contains(&first));
    }
    numbers.first().is_some_and(|n| (1..=31).contains(n))
}

impl Detector {
    /// Confirms a match of this detector's pattern: its span in `subject`'s bytes.
    fn locate(
        &self,
        subject: &str,
        span: Span,
        groups: Option<&CaptureLocations>,
        alnum: &dyn Fn(char) -> bool,
    ) -> Option<Span> {
        let bytes = subject.as_bytes();
        let (start, end) = span;
        let matched = &bytes[start..end];
        let group_span = |i: usize| groups.and_then(|g| g.get(i));
        let group = |i: usize| group_span(i).map_or(b"".as_slice(), |(s, e)| &bytes[s..e]);
        match &self.kind {
            Kind::Email { domain } => locate_email(subject, start, domain),
            Kind::Phone {
                shapes,
                trunk,
                date_shaped,
            } => {
                let shape = shapes.iter().find(|(g, _, _)| group_span(*g).is_some())?;
                locate_phone(matched, start, *shape, *trunk, date_shaped)
            }
            Kind::Card => group_prefixes(matched)
                .into_iter()
                .find(|(_, digits)| payment_card_valid(digits))
                .map(|(prefix_end, _)| (start, start + prefix_end)),
            Kind::UsSsn {
                area,
                group: g,
                serial,
            } => {
                let area: Vec<u8> = [matched[0]].iter().chain(group(*area)).copied().collect();
                us_ssn_valid(&area, group(*g), group(*serial)).then_some(span)
            }
            Kind::UkNino => {
                let compact: Vec<u8> = matched.iter().copied().filter(|&c| c != b' ').collect();
                uk_nino_valid(&compact).then_some(span)
            }
            Kind::NlBsn => nl_bsn_valid(&digits_of(matched)).then_some(span),
            Kind::DeTaxId => de_tax_id_valid(&digits_of(matched)).then_some(span),
            Kind::Iban => locate_iban(bytes, start, matched),
            Kind::Ipv4 => ipv4_valid(matched).then_some(span),
            Kind::Ipv6 { body } => locate_ipv6(subject, start, body),
            Kind::DateOfBirth { date } => {
                if start > 0 {
                    let before = char_before(subject, start);
                    if alnum(before) || before == '_' {
                        return None;
                    }
                }
                let (s, e) = group_span(*date)?;
                plausible_date(&subject[s..e]).then_some((s, e))
            }
            Kind::Token { known_keys } => {
                let known = known_keys.is_match(matched).unwrap_or(false);
                (known || is_high_entropy(matched)).then_some(span)
            }
            Kind::Whole => Some(span),
        }
    }
}

// --- the scan ----------------------------------------------------------------------

/// The PII detectors of one Python `Scanner`, compiled.
#[pyclass(frozen)]
struct NativeScanner {
    detectors: Vec<Detector>,
    families: Vec<Family>,
    alone: Vec<usize>,
    context: usize,
    alnum: PythonAlnum,
}

type Spec = (
    String,
    String,
    bool,
    bool,
    Option<String>,
    String,
    usize,
    usize,
    bool,
    Vec<String>,
);

#[pymethods]
impl NativeScanner {
    /// One spec per detector: (kind, pattern, verbose, unicode, trigger or None,
    /// gate or "", back, lead, lowered, keywords); `context` as in `Scanner`.
    #[new]
    fn new(specs: Vec<Spec>, context: usize) -> PyResult<Self> {
        let mut detectors = Vec::new();
        let mut families: Vec<(String, Family)> = Vec::new();
        let mut alone = Vec::new();
        for (index, spec) in specs.into_iter().enumerate() {
            let (kind, pattern, verbose, unicode, trigger, gate, back, lead, lowered, keywords) =
                spec;
            let gate = Gate::parse(&gate)?;
            if !lowered {
                reads_ascii_only(&pattern)?;
                if let Some(trigger) = &trigger {
                    reads_ascii_only(trigger)?;
                }
            }
            // A family member is matched where its trigger hit, like Python's
            // `pattern.match(text, pos)`.
            let source = if trigger.is_some() {
                format!(r"\G(?:{pattern})")
            } else {
                pattern
            };
            let compiled = Pattern::new(&source, verbose, unicode, lowered)?;
            let kind = kind_of(&kind, &compiled.ascii)?;
            let needs_groups = matches!(
                kind,
                Kind::Phone { .. } | Kind::UsSsn { .. } | Kind::DateOfBirth { .. }
            );
            detectors.push(Detector {
                kind,
                pattern: compiled,
                back,
                lead,
                lowered,
                keywords,
                gate,
                needs_groups,
            });
            match trigger {
                None => alone.push(index),
                Some(source) => match families.iter_mut().find(|(s, _)| *s == source) {
                    Some((_, family)) => {
                        family.back = family.back.max(back);
                        family.members.push(index);
                    }
                    None => {
                        let trigger = compile(&source, false, false, false)?;
                        families.push((
                            source,
                            Family {
                                trigger,
                                gate,
                                back,
                                members: vec![index],
                            },
                        ));
                    }
                },
            }
        }
        let families = families.into_iter().map(|(_, family)| family).collect();
        Ok(NativeScanner {
            detectors,
            families,
            alone,
            context,
            alnum: PythonAlnum::new(),
        })
    }

    /// (detector index, start, end) of each candidate whose span starts in
    /// [begin, end), in code points; in no particular order.
    #[pyo3(signature = (text, begin=0, end=None))]
    fn scan(
        &self,
        py: Python<'_>,
        text: &str,
        begin: usize,
        end: Option<usize>,
    ) -> Vec<(usize, usize, usize)> {
        let alnum = |c: char| self.alnum.of(py, c);
        // Every detector but the lowered ones reads ASCII only, so it runs on the
        // text with each other character replaced by one byte: byte offsets are
        // then code point offsets, and the patterns run without UTF-8 checks.
        let ascii = text.is_ascii();
        let mapped: Cow<'_, str> = if ascii {
            Cow::Borrowed(text)
        } else {
            Cow::Owned(one_byte_per_char(text, &alnum))
        };
        let bytes = mapped.as_bytes();
        let stop = end.unwrap_or(bytes.len());
        let gated = &bytes[begin.saturating_sub(self.context).min(bytes.len())..];
        let mut gates: Vec<(Gate, bool)> = Vec::new();
        let mut passes = |gate: Gate| match gates.iter().find(|(g, _)| *g == gate) {
            Some(&(_, open)) => open,
            None => {
                let open = gate.passes(gated);
                gates.push((gate, open));
                open
            }
        };
        let identity = Offsets::identity(bytes.len());
        let mut found = Vec::new();

        for family in &self.families {
            if !passes(family.gate) {
                continue;
            }
            let mut groups: Vec<Option<CaptureLocations>> = family
                .members
                .iter()
                .map(|&i| {
                    let detector = &self.detectors[i];
                    detector
                        .needs_groups
                        .then(|| detector.pattern.ascii.capture_locations())
                })
                .collect();
            let mut position = begin.min(bytes.len());
            while let Ok(Some(hit)) = family.trigger.find_at(bytes, position) {
                let at = hit.start();
                if at >= stop + family.back {
                    break;
                }
                for (slot, &i) in family.members.iter().enumerate() {
                    let detector = &self.detectors[i];
                    if at >= stop + detector.back {
                        continue;
                    }
                    if let Some((Some(span), _)) =
                        next_match(detector, &mapped, true, at, groups[slot].as_mut(), &alnum)
                    {
                        keep(&identity, i, span, begin, stop, &mut found);
                    }
                }
                position = at + 1;
            }
        }

        let mut lowered: Option<(String, Offsets, bool)> = None;
        for &i in &self.alone {
            let detector = &self.detectors[i];
            if !passes(detector.gate) {
                continue;
            }
            let first = begin.saturating_sub(detector.lead);
            let (subject, offsets, subject_ascii) =
                if detector.lowered || !detector.keywords.is_empty() {
                    let (lower, offsets, lower_ascii) = lowered.get_or_insert_with(|| {
                        let lower = lower_same_length(text);
                        let lower_ascii = lower.is_ascii();
                        let offsets = Offsets::new(&lower, lower_ascii);
                        (lower, offsets, lower_ascii)
                    });
                    let window = &lower[offsets.byte(first)..];
                    if !detector.keywords.is_empty()
                        && !detector
                            .keywords
                            .iter()
                            .any(|k| window.contains(k.as_str()))
                    {
                        continue;
                    }
                    if detector.lowered {
                        (lower.as_str(), &*offsets, *lower_ascii)
                    } else {
                        (&*mapped, &identity, true)
                    }
                } else {
                    (&*mapped, &identity, true)
                };
            let mut groups = detector
                .needs_groups
                .then(|| detector.pattern.on(subject_ascii).capture_locations());
            let last_start = stop + detector.back;
            let mut position = offsets.byte(first);
            while position <= subject.len() {
                let Some((span, found_at)) = next_match(
                    detector,
                    subject,
                    subject_ascii,
                    position,
                    groups.as_mut(),
                    &alnum,
                ) else {
                    break;
                };
                if offsets.index(found_at) >= last_start {
                    break;
                }
                if let Some(span) = span {
                    keep(offsets, i, span, begin, stop, &mut found);
                }
                position = found_at + subject[found_at..].chars().next().map_or(1, char::len_utf8);
            }
        }
        found
    }
}

/// `text` with each non-ASCII character replaced by one control byte: ALNUM when
/// Python's `str.isalnum()` holds for it, OTHER when not. Neither is in any class
/// a non-lowered pattern names, and `.` takes each as one character, as before.
fn one_byte_per_char(text: &str, alnum: &dyn Fn(char) -> bool) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii() {
                c
            } else if alnum(c) {
                ALNUM
            } else {
                OTHER
            }
        })
        .collect()
}

const ALNUM: char = '\u{1}';
const OTHER: char = '\u{2}';

/// Refuses a pattern that could tell characters outside ASCII apart: the scan
/// runs it on text where each of them is one placeholder byte.
fn reads_ascii_only(pattern: &str) -> PyResult<()> {
    let unicode_escape = [
        "\\w", "\\W", "\\d", "\\D", "\\s", "\\S", "\\b", "\\B", "\\p", "\\P",
    ]
    .iter()
    .any(|escape| pattern.contains(escape));
    if !pattern.is_ascii() || unicode_escape {
        return Err(PyValueError::new_err(format!(
            "pattern {pattern:?} reads characters outside ASCII: only a lowered detector may"
        )));
    }
    Ok(())
}

/// The next match of `detector` from `position` (at `position` for a family
/// member, whose pattern is anchored): (its confirmed span, where it starts).
fn next_match(
    detector: &Detector,
    subject: &str,
    ascii: bool,
    position: usize,
    groups: Option<&mut CaptureLocations>,
    alnum: &dyn Fn(char) -> bool,
) -> Option<(Option<Span>, usize)> {
    let bytes = subject.as_bytes();
    let pattern = detector.pattern.on(ascii);
    let (found, groups) = match groups {
        Some(locs) => (
            pattern.captures_read_at(locs, bytes, position).ok()??,
            Some(&*locs),
        ),
        None => (pattern.find_at(bytes, position).ok()??, None),
    };
    Some((
        detector.locate(subject, (found.start(), found.end()), groups, alnum),
        found.start(),
    ))
}

fn keep(
    offsets: &Offsets,
    index: usize,
    span: Span,
    begin: usize,
    stop: usize,
    found: &mut Vec<(usize, usize, usize)>,
) {
    let start = offsets.index(span.0);
    if begin <= start && start < stop {
        found.push((index, start, offsets.index(span.1)));
    }
}

/// A set of substrings, all looked for in one pass over a text.
#[pyclass(frozen)]
struct KeywordSet {
    automaton: AhoCorasick,
    count: usize,
}

#[pymethods]
impl KeywordSet {
    #[new]
    fn new(keywords: Vec<String>) -> PyResult<Self> {
        let automaton = AhoCorasick::new(&keywords)
            .map_err(|e| PyValueError::new_err(format!("keywords: {e}")))?;
        Ok(KeywordSet {
            automaton,
            count: keywords.len(),
        })
    }

    /// Indices of the keywords that occur in `text`, ascending.
    fn present(&self, text: &str) -> Vec<usize> {
        let mut seen = vec![false; self.count];
        // Overlapping: a keyword inside another one's match still counts.
        for found in self.automaton.find_overlapping_iter(text) {
            seen[found.pattern().as_usize()] = true;
        }
        (0..self.count).filter(|&i| seen[i]).collect()
    }
}

#[pymodule]
fn privatellm_pii_scan(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<NativeScanner>()?;
    module.add_class::<KeywordSet>()?;
    Ok(())
}
