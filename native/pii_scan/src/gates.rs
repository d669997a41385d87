//! Gates: cheap facts about a text without which a detector cannot match,
//! as `_GATES` in privatellm.filters.scanner.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Gate {
    Open,
    Number,
    Capitals,
    Digit,
    At,
    Colon,
    Dashes,
    LongRun,
}

impl Gate {
    pub(crate) fn parse(name: &str) -> PyResult<Gate> {
        Ok(match name {
            "" => Gate::Open,
            "number" => Gate::Number,
            "capitals" => Gate::Capitals,
            "digit" => Gate::Digit,
            "at" => Gate::At,
            "colon" => Gate::Colon,
            "dashes" => Gate::Dashes,
            "long_run" => Gate::LongRun,
            _ => return Err(PyValueError::new_err(format!("unknown gate {name:?}"))),
        })
    }

    /// Whether a text can hold a match of the detectors this gate guards.
    pub(crate) fn passes(self, raw: &[u8]) -> bool {
        match self {
            Gate::Open => true,
            Gate::Number => has_run(raw, NUMBERISH, 7),
            Gate::Capitals => has_capitals_then_digits(raw),
            Gate::Digit => raw.iter().any(u8::is_ascii_digit),
            Gate::At => raw.contains(&b'@'),
            Gate::Colon => raw.contains(&b':'),
            Gate::Dashes => has_run(raw, DASH, 5),
            Gate::LongRun => has_run(raw, RUN, 20),
        }
    }
}

// Classes of bytes that gates look for runs of.
const NUMBERISH: u8 = 1; // [0-9 ().+/-]: what NUMBER_TRIGGER reads
const RUN: u8 = 2; // RUN_CHARS: machine tokens
const DASH: u8 = 4;

const CLASSES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        let mut bits = 0;
        if b.is_ascii_digit() || matches!(b, b' ' | b'(' | b')' | b'.' | b'+' | b'-' | b'/') {
            bits |= NUMBERISH;
        }
        if b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'_' | b'.' | b'-') {
            bits |= RUN;
        }
        if b == b'-' {
            bits |= DASH;
        }
        table[c] = bits;
        c += 1;
    }
    table
};

/// Whether `raw` holds `len` bytes of class `bit` in a row. A window is checked
/// from its end backwards; the first byte outside the class moves the next window
/// past it, so prose costs about one look per `len` bytes.
fn has_run(raw: &[u8], bit: u8, len: usize) -> bool {
    let mut end = len;
    while end <= raw.len() {
        let start = end - len;
        let mut at = end;
        while at > start && CLASSES[usize::from(raw[at - 1])] & bit != 0 {
            at -= 1;
        }
        if at == start {
            return true;
        }
        end = at + len;
    }
    false
}

/// Two capitals, maybe a space, then two digits: where CAPITALS_TRIGGER can match.
fn has_capitals_then_digits(raw: &[u8]) -> bool {
    let mut from = 0;
    while let Some(offset) = raw[from..].iter().position(u8::is_ascii_digit) {
        let at = from + offset;
        if raw.get(at + 1).is_some_and(u8::is_ascii_digit) {
            let before = &raw[..at];
            let capitals =
                |s: &[u8]| s.len() >= 2 && s[s.len() - 2..].iter().all(u8::is_ascii_uppercase);
            if capitals(before) || (before.ends_with(b" ") && capitals(&before[..before.len() - 1]))
            {
                return true;
            }
        }
        from = at + 1;
    }
    false
}
