//! Checksums and structural rules of identifiers, as in privatellm.filters.checksums.

#[rustfmt::skip]
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24), ("AE", 23), ("AL", 28), ("AT", 20), ("AZ", 28), ("BA", 20), ("BE", 16),
    ("BG", 22), ("BH", 22), ("BI", 27), ("BR", 29), ("BY", 28), ("CH", 21), ("CR", 22),
    ("CY", 28), ("CZ", 24), ("DE", 22), ("DJ", 27), ("DK", 18), ("DO", 28), ("EE", 20),
    ("EG", 29), ("ES", 24), ("FI", 18), ("FK", 18), ("FO", 18), ("FR", 27), ("GB", 22),
    ("GE", 22), ("GI", 23), ("GL", 18), ("GR", 27), ("GT", 28), ("HR", 21), ("HU", 28),
    ("IE", 22), ("IL", 23), ("IQ", 23), ("IS", 26), ("IT", 27), ("JO", 30), ("KW", 30),
    ("KZ", 20), ("LB", 28), ("LC", 32), ("LI", 21), ("LT", 20), ("LU", 20), ("LV", 21),
    ("LY", 25), ("MC", 27), ("MD", 24), ("ME", 22), ("MK", 19), ("MN", 20), ("MR", 27),
    ("MT", 31), ("MU", 30), ("NI", 28), ("NL", 18), ("NO", 15), ("OM", 23), ("PK", 24),
    ("PL", 28), ("PS", 29), ("PT", 25), ("QA", 29), ("RO", 24), ("RS", 22), ("RU", 33),
    ("SA", 24), ("SC", 31), ("SD", 18), ("SE", 24), ("SI", 19), ("SK", 24), ("SM", 27),
    ("SO", 23), ("ST", 25), ("SV", 28), ("TL", 23), ("TN", 24), ("TR", 26), ("UA", 29),
    ("VA", 22), ("VG", 24), ("XK", 20), ("YE", 30),
];

pub(crate) fn iban_length(country: &[u8]) -> Option<usize> {
    IBAN_LENGTHS
        .iter()
        .find(|(c, _)| c.as_bytes() == country)
        .map(|&(_, n)| n)
}

/// (lowest prefix, highest prefix, shortest and longest length) of the card schemes.
const CARD_ISSUERS: &[(u32, u32, &[usize])] = &[
    (4, 4, &[13, 16, 19]),
    (51, 55, &[16]),
    (2221, 2720, &[16]),
    (34, 34, &[15]),
    (37, 37, &[15]),
    (300, 305, &[14, 16, 17, 18, 19]),
    (36, 36, &[14, 16, 17, 18, 19]),
    (38, 39, &[16, 17, 18, 19]),
    (6011, 6011, &[16, 17, 18, 19]),
    (644, 649, &[16, 17, 18, 19]),
    (65, 65, &[16, 17, 18, 19]),
    (3528, 3589, &[16, 17, 18, 19]),
    (62, 62, &[16, 17, 18, 19]),
    (50, 50, &[13, 14, 15, 16, 17, 18, 19]),
    (56, 58, &[13, 14, 15, 16, 17, 18, 19]),
    (63, 63, &[13, 14, 15, 16, 17, 18, 19]),
    (67, 67, &[13, 14, 15, 16, 17, 18, 19]),
];

fn all_digits(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(u8::is_ascii_digit)
}

pub(crate) fn number(s: &[u8]) -> u64 {
    s.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    })
}

fn luhn_valid(digits: &[u8]) -> bool {
    let total: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(d - b'0');
            if i % 2 == 1 {
                if d > 4 {
                    2 * d - 9
                } else {
                    2 * d
                }
            } else {
                d
            }
        })
        .sum();
    total.is_multiple_of(10)
}

pub(crate) fn payment_card_valid(digits: &[u8]) -> bool {
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let issuer = CARD_ISSUERS.iter().any(|&(low, high, lengths)| {
        let width = low.to_string().len();
        let prefix = number(&digits[..width]) as u32;
        lengths.contains(&digits.len()) && low <= prefix && prefix <= high
    });
    issuer && luhn_valid(digits)
}

pub(crate) fn iban_valid(iban: &[u8]) -> bool {
    if iban.len() < 4 || iban_length(&iban[..2]) != Some(iban.len()) || !all_digits(&iban[2..4]) {
        return false;
    }
    if !(2..=98).contains(&number(&iban[2..4])) {
        return false;
    }
    if !iban
        .iter()
        .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
    {
        return false;
    }
    let mut remainder = 0u32;
    for &c in iban[4..].iter().chain(&iban[..4]) {
        remainder = if c.is_ascii_digit() {
            (remainder * 10 + u32::from(c - b'0')) % 97
        } else {
            (remainder * 100 + u32::from(c - b'A') + 10) % 97
        };
    }
    remainder == 1
}

pub(crate) fn us_ssn_valid(area: &[u8], group: &[u8], serial: &[u8]) -> bool {
    area != b"000" && area != b"666" && area[0] != b'9' && group != b"00" && serial != b"0000"
}

pub(crate) fn uk_nino_valid(nino: &[u8]) -> bool {
    if nino.len() != 9 || !all_digits(&nino[2..8]) || !b"ABCD".contains(&nino[8]) {
        return false;
    }
    let (first, second) = (nino[0], nino[1]);
    !b"DFIQUV".contains(&first)
        && !b"DFIOQUV".contains(&second)
        && first.is_ascii_alphabetic()
        && second.is_ascii_alphabetic()
        && !matches!(
            &nino[..2],
            b"BG" | b"GB" | b"KN" | b"NK" | b"NT" | b"TN" | b"ZZ"
        )
}

pub(crate) fn nl_bsn_valid(digits: &[u8]) -> bool {
    if digits.len() != 9 || digits.iter().all(|&d| d == b'0') {
        return false;
    }
    let total: i64 = digits[..8]
        .iter()
        .zip((2..=9).rev())
        .map(|(d, weight)| i64::from(d - b'0') * weight)
        .sum();
    (total - i64::from(digits[8] - b'0')).rem_euclid(11) == 0
}

fn iso7064_mod11_10_check_digit(digits: &[u8]) -> u32 {
    let mut product = 10;
    for d in digits {
        let total = match (u32::from(d - b'0') + product) % 10 {
            0 => 10,
            t => t,
        };
        product = (total * 2) % 11;
    }
    (11 - product) % 10
}

pub(crate) fn de_tax_id_valid(digits: &[u8]) -> bool {
    if digits.len() != 11 || digits[0] == b'0' {
        return false;
    }
    let body = &digits[..10];
    let mut counts = [0u8; 10];
    for d in body {
        counts[usize::from(d - b'0')] += 1;
    }
    let distinct = counts.iter().filter(|&&n| n > 0).count();
    if distinct == 8 {
        if counts.iter().max() != Some(&3) {
            return false;
        }
        if body.windows(3).any(|w| w[0] == w[1] && w[1] == w[2]) {
            return false;
        }
    } else if distinct != 9 {
        return false;
    }
    iso7064_mod11_10_check_digit(body) == u32::from(digits[10] - b'0')
}

pub(crate) fn ipv4_valid(text: &[u8]) -> bool {
    let parts: Vec<&[u8]> = text.split(|&c| c == b'.').collect();
    parts.len() == 4
        && parts.iter().all(|p| {
            all_digits(p) && p.len() <= 3 && number(p) <= 255 && (p == b"0" || p[0] != b'0')
        })
}

fn hextet_valid(part: &[u8]) -> bool {
    !part.is_empty() && part.len() <= 4 && part.iter().all(u8::is_ascii_hexdigit)
}

/// Python's `ipaddress.IPv6Address` rules, step by step.
pub(crate) fn ipv6_valid(text: &[u8]) -> bool {
    let mut parts: Vec<&[u8]> = text.split(|&c| c == b':').collect();
    if parts.len() < 3 {
        return false;
    }
    if parts[parts.len() - 1].contains(&b'.') {
        // An IPv4 address at the end stands for the last two hextets.
        if !ipv4_valid(parts.pop().expect("a last part")) {
            return false;
        }
        parts.extend([b"0".as_slice(), b"0".as_slice()]);
    }
    if parts.len() > 9 {
        return false;
    }
    let mut skip = None;
    for (i, part) in parts.iter().enumerate().take(parts.len() - 1).skip(1) {
        if part.is_empty() {
            if skip.is_some() {
                return false;
            }
            skip = Some(i);
        }
    }
    let (hi, lo) = match skip {
        Some(skip) => {
            let (mut hi, mut lo) = (skip, parts.len() - skip - 1);
            if parts[0].is_empty() {
                hi -= 1;
                if hi > 0 {
                    return false;
                }
            }
            if parts[parts.len() - 1].is_empty() {
                lo -= 1;
                if lo > 0 {
                    return false;
                }
            }
            // "::" stands for one hextet at least.
            if hi + lo > 7 {
                return false;
            }
            (hi, lo)
        }
        None => {
            if parts.len() != 8 || parts[0].is_empty() || parts[7].is_empty() {
                return false;
            }
            (8, 0)
        }
    };
    parts[..hi]
        .iter()
        .chain(&parts[parts.len() - lo..])
        .all(|p| hextet_valid(p))
}

pub(crate) fn shannon_entropy(text: &[u8]) -> f64 {
    // Counted in order of first appearance, as Python's Counter does, so the sum
    // rounds the same way.
    let mut order: Vec<u8> = Vec::new();
    let mut counts = [0usize; 256];
    for &c in text {
        if counts[usize::from(c)] == 0 {
            order.push(c);
        }
        counts[usize::from(c)] += 1;
    }
    let length = text.len() as f64;
    let total = order.iter().fold(0.0, |sum, &c| {
        let p = counts[usize::from(c)] as f64 / length;
        sum + p * p.log2()
    });
    -total
}
