//! What a stress run uploads: the size spec (`4k`, `1k..1m`, `mix`, or a
//! weighted list), the rate (`100/s`), and the generated content. Pure and
//! deterministic for a given seed, so a run can be repeated exactly.

use std::fmt;

/// How big the generated files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeSpec {
    Fixed(u64),
    /// Uniformly distributed between the two bounds, both included.
    Range(u64, u64),
    /// Weighted choice between specs (weights are relative).
    Mix(Vec<(u32, SizeSpec)>),
}

/// `mix`: mostly small files, some medium, a few large, like a busy upload folder.
const MIX: &str = "4k:70,64k..1m:25,1m..8m:5";

impl SizeSpec {
    /// Parses `4k`, `1k..1m`, `mix`, or `SPEC:WEIGHT,SPEC:WEIGHT,...`.
    /// Units: none (bytes), k, m, g (powers of 1024), optionally followed by `iB` or `B`.
    pub fn parse(text: &str) -> Result<SizeSpec, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("mix") {
            return SizeSpec::parse(MIX);
        }
        if text.contains(',') || text.contains(':') {
            let mut parts = Vec::new();
            for part in text.split(',') {
                let (spec, weight) = part
                    .rsplit_once(':')
                    .ok_or_else(|| format!("`{part}`: write SIZE:WEIGHT, e.g. 4k:70"))?;
                let weight: u32 = weight
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{weight}` is not a whole-number weight"))?;
                let spec = SizeSpec::parse(spec)?;
                if matches!(spec, SizeSpec::Mix(_)) {
                    return Err("a mix cannot contain another mix".into());
                }
                parts.push((weight, spec));
            }
            if parts.iter().all(|(w, _)| *w == 0) {
                return Err("every weight of the mix is 0".into());
            }
            return Ok(SizeSpec::Mix(parts));
        }
        if let Some((lo, hi)) = text.split_once("..") {
            let (lo, hi) = (parse_size(lo)?, parse_size(hi)?);
            if lo > hi {
                return Err(format!("`{text}`: the lower bound is above the upper one"));
            }
            return Ok(SizeSpec::Range(lo, hi));
        }
        parse_size(text).map(SizeSpec::Fixed)
    }

    /// The size of file number `index` of a run seeded with `seed`.
    pub fn size_of(&self, seed: u64, index: u64) -> u64 {
        let r = mix64(seed ^ mix64(index.wrapping_add(0x5151)));
        match self {
            SizeSpec::Fixed(n) => *n,
            SizeSpec::Range(lo, hi) => lo + r % (hi - lo + 1),
            SizeSpec::Mix(parts) => {
                let total: u64 = parts.iter().map(|(w, _)| u64::from(*w)).sum();
                let mut pick = r % total.max(1);
                for (w, spec) in parts {
                    if pick < u64::from(*w) {
                        return spec.size_of(seed.rotate_left(17), index);
                    }
                    pick -= u64::from(*w);
                }
                0
            }
        }
    }
}

impl fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeSpec::Fixed(n) => f.write_str(&format_size(*n)),
            SizeSpec::Range(lo, hi) => write!(f, "{}..{}", format_size(*lo), format_size(*hi)),
            SizeSpec::Mix(parts) => {
                let parts: Vec<String> = parts.iter().map(|(w, s)| format!("{s}:{w}")).collect();
                f.write_str(&parts.join(","))
            }
        }
    }
}

fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit; write e.g. 512, 4k, 1m or 1g"
            ));
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size; write e.g. 512, 4k, 1m or 1g"))?;
    n.checked_mul(1 << shift)
        .filter(|n| *n <= 64 << 30)
        .ok_or_else(|| format!("`{text}` is larger than 64 GiB"))
}

/// `4096` → `4k`, `1048576` → `1m`, `1000` → `1000`.
pub fn format_size(n: u64) -> String {
    for (shift, unit) in [(30, "g"), (20, "m"), (10, "k")] {
        if n >= 1 << shift && n % (1 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// Parses a rate: `100/s`, `100` (per second) or `600/m`; files per second.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let (number, per) = match t.split_once('/') {
        Some((n, "s")) => (n, 1.0),
        Some((n, "m")) => (n, 60.0),
        Some(_) => {
            return Err(format!(
                "`{text}`: write files per second (100/s) or per minute (600/m)"
            ));
        }
        None => (t, 1.0),
    };
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a rate; write e.g. 100/s"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("`{text}`: the rate must be above 0"));
    }
    Ok(n / per)
}

/// SplitMix64's finalizer: a cheap, well-mixed hash of a counter.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The bytes of a generated file: incompressible, reproducible, `len` long.
pub struct Content {
    state: u64,
    left: u64,
}

impl Content {
    pub fn new(seed: u64, index: u64, len: u64) -> Content {
        Content {
            state: mix64(seed ^ index.rotate_left(32)),
            left: len,
        }
    }
}

impl std::io::Read for Content {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        for chunk in buf[..n].chunks_mut(8) {
            self.state = mix64(self.state);
            chunk.copy_from_slice(&self.state.to_le_bytes()[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn sizes_parse_with_units_ranges_and_mixes() {
        assert_eq!(SizeSpec::parse("4k"), Ok(SizeSpec::Fixed(4096)));
        assert_eq!(SizeSpec::parse("4KiB"), Ok(SizeSpec::Fixed(4096)));
        assert_eq!(SizeSpec::parse("0"), Ok(SizeSpec::Fixed(0)));
        assert_eq!(
            SizeSpec::parse("1k..1m"),
            Ok(SizeSpec::Range(1024, 1 << 20))
        );
        let mix = SizeSpec::parse("mix").unwrap();
        assert_eq!(mix.to_string(), "4k:70,64k..1m:25,1m..8m:5");
        assert!(SizeSpec::parse("4x").unwrap_err().contains("unknown unit"));
        assert!(
            SizeSpec::parse("1m..1k")
                .unwrap_err()
                .contains("lower bound")
        );
        assert!(SizeSpec::parse("4k:x").is_err());
        assert!(SizeSpec::parse("100g").unwrap_err().contains("64 GiB"));
    }

    #[test]
    fn sizes_are_deterministic_and_within_bounds() {
        let spec = SizeSpec::parse("1k..2k").unwrap();
        for i in 0..1000 {
            let n = spec.size_of(7, i);
            assert!((1024..=2048).contains(&n));
            assert_eq!(n, spec.size_of(7, i));
        }
        let mix = SizeSpec::parse("4k:1,1m:1").unwrap();
        let big = (0..1000).filter(|i| mix.size_of(3, *i) == 1 << 20).count();
        assert!((400..600).contains(&big), "{big}");
    }

    #[test]
    fn rates_and_content() {
        assert_eq!(parse_rate("100/s"), Ok(100.0));
        assert_eq!(parse_rate("60/m"), Ok(1.0));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("5/h").is_err());
        let mut a = Vec::new();
        Content::new(1, 2, 1000).read_to_end(&mut a).unwrap();
        let mut b = Vec::new();
        Content::new(1, 2, 1000).read_to_end(&mut b).unwrap();
        assert_eq!(a.len(), 1000);
        assert_eq!(a, b);
    }
}
