//! Password hashing with the host's own libcrypt (libxcrypt on Debian 12+ and
//! RHEL 9), so every hash is one the host's pam_unix accepts: the salt and the
//! method's parameters come from libcrypt itself, never from us.
//!
//! The FFI is two functions. `crypt_gensalt_rn` makes a setting string (method,
//! cost, random salt from the kernel); `crypt_r` hashes with it, or checks a
//! password against an existing hash. Both write only into buffers we own.

use std::ffi::{CStr, CString, c_char, c_int, c_ulong};

#[link(name = "crypt")]
unsafe extern "C" {
    fn crypt_gensalt_rn(
        prefix: *const c_char,
        count: c_ulong,
        rbytes: *const c_char,
        nrbytes: c_int,
        output: *mut c_char,
        output_size: c_int,
    ) -> *mut c_char;

    fn crypt_r(phrase: *const c_char, setting: *const c_char, data: *mut u8) -> *mut c_char;
}

/// `struct crypt_data` is 32 KiB in libxcrypt and about 128 KiB in glibc's old
/// libcrypt; a zeroed buffer larger than both is valid for either.
const CRYPT_DATA_SIZE: usize = 256 * 1024;
/// Larger than libxcrypt's CRYPT_GENSALT_OUTPUT_SIZE (192).
const GENSALT_OUTPUT_SIZE: usize = 256;

/// A hashing method, by the name login.defs uses for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Yescrypt,
    Sha512,
    Sha256,
}

impl Method {
    /// The crypt prefix that selects the method.
    pub fn prefix(self) -> &'static str {
        match self {
            Method::Yescrypt => "$y$",
            Method::Sha512 => "$6$",
            Method::Sha256 => "$5$",
        }
    }

    /// Parses a login.defs ENCRYPT_METHOD value or a config value, case-insensitively.
    pub fn from_name(name: &str) -> Option<Method> {
        match name.trim().to_ascii_uppercase().as_str() {
            "YESCRYPT" => Some(Method::Yescrypt),
            "SHA512" => Some(Method::Sha512),
            "SHA256" => Some(Method::Sha256),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::Yescrypt => "yescrypt",
            Method::Sha512 => "sha512",
            Method::Sha256 => "sha256",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptError {
    #[error("a password must not contain a NUL byte")]
    Nul,
    #[error("libcrypt cannot make a {0} salt on this host")]
    Gensalt(&'static str),
    #[error("libcrypt cannot hash with this method on this host")]
    Hash,
}

/// The most SHA-crypt rounds a hash may ask for. Checking a hash costs one
/// crypt_r in the daemon's main loop (and one at every login): libxcrypt allows
/// up to 999,999,999 rounds, minutes of CPU, enough to trip the 30 s watchdog.
/// Measured here (libxcrypt 4.4.33, 2-core AMD EPYC VM), one crypt_r takes
/// 124 ms at 500,000 rounds of SHA-512 and 178 ms of SHA-256; the default,
/// 5,000 rounds, about 1.5 ms.
pub const SHA_MAX_ROUNDS: u64 = 500_000;
/// libxcrypt refuses fewer rounds (glibc's old libcrypt raised them to this).
const SHA_MIN_ROUNDS: u64 = 1_000;

/// The highest yescrypt cost accepted, as libxcrypt counts it (`crypt_gensalt`
/// count, login.defs' YESCRYPT_COST_FACTOR; 1 to 11, default 5). Measured here
/// (as above): cost 5 (N=2^12, r=32: 16 MiB) 18 ms, 8 (N=2^15, 128 MiB) 164 ms,
/// 9 (256 MiB) 324 ms, 10 (512 MiB) 705 ms, 11 (1 GiB) 2.3 s.
pub const YESCRYPT_MAX_COST: u32 = 8;
/// The work of [`YESCRYPT_MAX_COST`] as N·r (libxcrypt: r=32, N=2^(cost+7)).
/// A hash's work is bounded as N·r·p·(t+1): memory grows with N·r (and with p
/// in classic scrypt), time with all four, so this over-estimates every flavor.
const YESCRYPT_MAX_WORK: u128 = 32 << (YESCRYPT_MAX_COST + 7);

/// Length of the hash part (after the last `$`) of each accepted method.
const SHA512_HASH_LEN: usize = 86;
const SHA256_HASH_LEN: usize = 43;
const YESCRYPT_HASH_LEN: usize = 43;
/// SHA-crypt uses at most 16 salt characters; a longer salt is cut, so the
/// stored string could never match what libcrypt computes.
const SHA_SALT_MAX: usize = 16;
/// yescrypt takes up to 64 bytes of salt, 86 base-64 characters.
const YESCRYPT_SALT_MAX: usize = 86;

const ACCEPTED: &str = "yescrypt (`$y$`), SHA-512 (`$6$`) and SHA-256 (`$5$`)";

/// Why a `password_hash` is refused, found without hashing anything.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HashError {
    /// `method` names it and its prefix, e.g. "MD5-crypt (`$1$`)".
    #[error("{method} is too weak to accept; accepted are {ACCEPTED}")]
    Weak { method: String },
    #[error("{method} is not accepted; accepted are {ACCEPTED}")]
    NotAccepted { method: String },
    #[error(
        "it is not a crypt hash (one starts with `$y$`, `$6$` or `$5$`); accepted are {ACCEPTED}"
    )]
    NotAHash,
    #[error("it is a malformed {method} hash: {why}")]
    Malformed { method: &'static str, why: String },
    #[error("{what} costs too much to check; at most {max} is accepted")]
    TooExpensive { what: String, max: String },
    #[error("libcrypt on this host cannot check this {0} hash")]
    Unsupported(&'static str),
}

impl HashError {
    /// How to fix it, for the operator.
    pub fn fix(&self) -> &'static str {
        match self {
            HashError::Weak { .. } | HashError::NotAccepted { .. } | HashError::NotAHash => {
                "make a yescrypt hash with `mkpasswd -m yescrypt`, or give `password:` and sftp-ha hashes it with the host's method"
            }
            HashError::Malformed { .. } | HashError::Unsupported(_) => {
                "paste the whole hash as `mkpasswd -m yescrypt` or /etc/shadow gives it, or give `password:` instead"
            }
            HashError::TooExpensive { .. } => {
                "make it with the default cost (`mkpasswd -m yescrypt`, or `$6$` without `rounds=`), or give `password:` instead"
            }
        }
    }
}

/// Methods refused by name: prefix, name, and whether it is refused as weak
/// (rather than merely not one the README promises). Longer prefixes first.
const REFUSED: &[(&str, &str, bool)] = &[
    ("$1$", "MD5-crypt", true),
    ("$3$", "NT hash", true),
    ("$sha1$", "PBKDF1-SHA1", true),
    ("$md5", "SunMD5", true),
    ("_", "BSDi extended DES", true),
    ("$2a$", "bcrypt", false),
    ("$2b$", "bcrypt", false),
    ("$2x$", "bcrypt", false),
    ("$2y$", "bcrypt", false),
    ("$2$", "bcrypt", false),
    ("$7$", "scrypt", false),
    ("$gy$", "gost-yescrypt", false),
    ("$sm3y$", "sm3-yescrypt", false),
    ("$sm3$", "SM3-crypt", false),
];

/// Checks that `hash` is a well-formed hash of an accepted method whose cost is
/// within the bounds, without hashing anything: this is what runs before any
/// hash from a file, or from /etc/shadow, reaches crypt_r.
pub fn check_hash(hash: &str) -> Result<Method, HashError> {
    if let Some(rest) = hash.strip_prefix("$y$") {
        check_yescrypt(rest)?;
        Ok(Method::Yescrypt)
    } else if let Some(rest) = hash.strip_prefix("$6$") {
        check_sha(rest, "SHA-512", SHA512_HASH_LEN)?;
        Ok(Method::Sha512)
    } else if let Some(rest) = hash.strip_prefix("$5$") {
        check_sha(rest, "SHA-256", SHA256_HASH_LEN)?;
        Ok(Method::Sha256)
    } else {
        Err(refused_method(hash))
    }
}

fn refused_method(hash: &str) -> HashError {
    if let Some(&(prefix, name, weak)) = REFUSED.iter().find(|(p, _, _)| hash.starts_with(p)) {
        let method = format!("{name} (`{prefix}`)");
        return if weak {
            HashError::Weak { method }
        } else {
            HashError::NotAccepted { method }
        };
    }
    if let Some(rest) = hash.strip_prefix('$') {
        // Name the prefix as written, but never echo more than a short word of
        // what may be a secret.
        let id: String = rest
            .chars()
            .take_while(|c| *c != '$')
            .take(12)
            .filter(|c| c.is_ascii_graphic())
            .collect();
        return HashError::NotAccepted {
            method: format!("the method `${id}$`"),
        };
    }
    if hash.len() == 13 && hash.bytes().all(|b| atoi64(b).is_some()) {
        return HashError::Weak {
            method: "traditional DES (13 characters, no `$`)".into(),
        };
    }
    HashError::NotAHash
}

/// `[rounds=N$]salt$hash` after `$6$` or `$5$`.
fn check_sha(rest: &str, method: &'static str, hash_len: usize) -> Result<(), HashError> {
    let malformed = |why: &str| HashError::Malformed {
        method,
        why: why.to_string(),
    };
    let rest = match rest.strip_prefix("rounds=") {
        None => rest,
        Some(after) => {
            let (number, rest) = after
                .split_once('$')
                .ok_or_else(|| malformed("`rounds=` is not followed by a number and `$`"))?;
            // libxcrypt refuses leading zeros and anything but digits; so do we,
            // rather than read the number another way than it does.
            if number.is_empty()
                || number.starts_with('0')
                || !number.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(malformed(
                    "`rounds=` must be a number without leading zeros, then `$`",
                ));
            }
            let too_many = || HashError::TooExpensive {
                what: format!(
                    "{method} with rounds={}",
                    if number.len() > 12 {
                        format!("{}...", &number[..12])
                    } else {
                        number.to_string()
                    }
                ),
                max: format!("rounds={SHA_MAX_ROUNDS}"),
            };
            let rounds: u64 = number.parse().map_err(|_| too_many())?;
            if rounds < SHA_MIN_ROUNDS {
                return Err(malformed(&format!(
                    "rounds={rounds} is below {SHA_MIN_ROUNDS}, which libxcrypt refuses"
                )));
            }
            if rounds > SHA_MAX_ROUNDS {
                return Err(too_many());
            }
            rest
        }
    };
    let (salt, hash) = rest
        .split_once('$')
        .ok_or_else(|| malformed("the salt is not followed by `$` and the hash"))?;
    if salt.is_empty() {
        return Err(malformed("the salt is empty"));
    }
    if salt.len() > SHA_SALT_MAX {
        return Err(malformed(&format!(
            "the salt is longer than {SHA_SALT_MAX} characters"
        )));
    }
    if !salt.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(malformed(
            "the salt may only contain printable ASCII other than space, `:` and `$`",
        ));
    }
    check_hash_part(hash, hash_len).map_err(|why| malformed(&why))
}

/// The part after the last `$`: exactly `len` characters of crypt's base-64.
fn check_hash_part(hash: &str, len: usize) -> Result<(), String> {
    if hash.len() != len || !hash.bytes().all(|b| atoi64(b).is_some()) {
        return Err(format!(
            "the part after the last `$` must be {len} characters of `./0-9A-Za-z`"
        ));
    }
    Ok(())
}

/// yescrypt's parameters, as the setting string encodes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct YescryptParams {
    pub flavor: u64,
    pub n_log2: u64,
    pub r: u64,
    pub p: u64,
    pub t: u64,
}

/// The highest flavor value libxcrypt decodes (YESCRYPT_RW plus every RW flavor bit).
const YESCRYPT_MAX_FLAVOR: u64 = 2 + (0x3fc >> 2);

/// `params$salt$hash` after `$y$`.
fn check_yescrypt(rest: &str) -> Result<YescryptParams, HashError> {
    let malformed = |why: &str| HashError::Malformed {
        method: "yescrypt",
        why: why.to_string(),
    };
    let (field, rest) = rest
        .split_once('$')
        .ok_or_else(|| malformed("the parameters are not followed by `$`"))?;
    let params = decode_yescrypt_params(field).map_err(malformed)?;
    if params.flavor > YESCRYPT_MAX_FLAVOR {
        return Err(malformed("the flavor in the parameters is unknown"));
    }
    // yescrypt needs N of at least 4; libxcrypt's own maximum is 2^63.
    if !(2..=63).contains(&params.n_log2) {
        return Err(malformed("N is outside 2^2 to 2^63"));
    }
    let work = (1u128 << params.n_log2)
        .checked_mul(u128::from(params.r))
        .and_then(|w| w.checked_mul(u128::from(params.p)))
        .and_then(|w| w.checked_mul(u128::from(params.t) + 1));
    if work.is_none_or(|w| w > YESCRYPT_MAX_WORK) {
        return Err(HashError::TooExpensive {
            what: format!(
                "yescrypt with N=2^{}, r={}, p={}, t={}",
                params.n_log2, params.r, params.p, params.t
            ),
            max: format!(
                "libxcrypt's cost {YESCRYPT_MAX_COST} (N=2^{}, r=32; N·r·p·(t+1) at most 2^{})",
                YESCRYPT_MAX_COST + 7,
                YESCRYPT_MAX_WORK.trailing_zeros()
            ),
        });
    }
    let (salt, hash) = rest
        .split_once('$')
        .ok_or_else(|| malformed("the salt is not followed by `$` and the hash"))?;
    if salt.is_empty()
        || salt.len() > YESCRYPT_SALT_MAX
        || !salt.bytes().all(|b| atoi64(b).is_some())
    {
        return Err(malformed(&format!(
            "the salt must be 1 to {YESCRYPT_SALT_MAX} characters of `./0-9A-Za-z`"
        )));
    }
    check_hash_part(hash, YESCRYPT_HASH_LEN).map_err(|why| malformed(&why))?;
    Ok(params)
}

/// Decodes the parameter field of a `$y$` hash (`j9T` for libxcrypt's default):
/// flavor, N's log2 and r, then optionally a bitmask saying which of p, t, g
/// and NROM follow. Each is one integer in yescrypt's variable-length encoding.
pub fn decode_yescrypt_params(field: &str) -> Result<YescryptParams, &'static str> {
    let mut chars = field.bytes().peekable();
    let bad = "the parameters are not valid yescrypt base-64";
    let flavor = decode_uint(&mut chars, 0).ok_or(bad)?;
    let n_log2 = decode_uint(&mut chars, 1).ok_or(bad)?;
    let r = decode_uint(&mut chars, 1).ok_or(bad)?;
    let mut params = YescryptParams {
        flavor,
        n_log2,
        r,
        p: 1,
        t: 0,
    };
    if chars.peek().is_some() {
        let have = decode_uint(&mut chars, 1).ok_or(bad)?;
        // Bits 1, 2, 4, 8: p, t, g, NROM follow, in that order.
        if have > 0xf {
            return Err("the parameters name fields yescrypt does not have");
        }
        if have & 1 != 0 {
            params.p = decode_uint(&mut chars, 2).ok_or(bad)?;
        }
        if have & 2 != 0 {
            params.t = decode_uint(&mut chars, 1).ok_or(bad)?;
        }
        // g (hash upgrades) and NROM (a shared ROM) make libxcrypt's crypt fail;
        // refusing them here says why.
        if have & 4 != 0 {
            return Err("it asks for hash upgrades (g), which crypt cannot check");
        }
        if have & 8 != 0 {
            return Err("it asks for a ROM (NROM), which crypt cannot check");
        }
    }
    if chars.next().is_some() {
        return Err(bad);
    }
    Ok(params)
}

/// The ranges of the first character of one encoded integer: a first
/// character in band k is followed by k more, and the bands before it count
/// as an offset, so small values take one character and any u32 fits in six.
const BANDS: [(u64, u64); 6] = [(0, 47), (48, 55), (56, 59), (60, 61), (62, 62), (63, 63)];

/// One integer of yescrypt's variable-length base-64 encoding, plus `min`;
/// `None` at the end of the input or on a character outside the alphabet.
fn decode_uint(chars: &mut impl Iterator<Item = u8>, min: u64) -> Option<u64> {
    let first = u64::from(atoi64(chars.next()?)?);
    let mut value = min;
    let mut scale = 1u64;
    for &(low, high) in &BANDS {
        if first > high {
            value += (high - low + 1) * scale;
            scale *= 64;
            continue;
        }
        value += (first - low) * scale;
        // The following characters are the low digits, most significant first.
        let mut digits = 0u64;
        let mut place = scale;
        while place > 1 {
            digits = digits * 64 + u64::from(atoi64(chars.next()?)?);
            place /= 64;
        }
        return Some(value + digits);
    }
    None
}

/// The value of one character of crypt's base-64 (`./0-9A-Za-z`).
fn atoi64(c: u8) -> Option<u8> {
    match c {
        b'.' => Some(0),
        b'/' => Some(1),
        b'0'..=b'9' => Some(c - b'0' + 2),
        b'A'..=b'Z' => Some(c - b'A' + 12),
        b'a'..=b'z' => Some(c - b'a' + 38),
        _ => None,
    }
}

/// Hashes `password` with a fresh salt for `method`, at libcrypt's default cost.
pub fn hash_password(password: &str, method: Method) -> Result<String, CryptError> {
    hash_with_cost(password, method, 0)
}

/// Hashes with libcrypt's `count` (0: its default; yescrypt 1-11, SHA rounds).
fn hash_with_cost(password: &str, method: Method, count: c_ulong) -> Result<String, CryptError> {
    if password.contains('\0') {
        return Err(CryptError::Nul);
    }
    let setting = gensalt(method, count)?;
    crypt(password, &setting).ok_or(CryptError::Hash)
}

/// A setting string (method, cost, fresh salt) from libcrypt.
fn gensalt(method: Method, count: c_ulong) -> Result<CString, CryptError> {
    let prefix = CString::new(method.prefix()).map_err(|_| CryptError::Nul)?;
    let mut setting = vec![0 as c_char; GENSALT_OUTPUT_SIZE];
    // SAFETY: `prefix` is a valid C string; rbytes NULL with nrbytes 0 asks libcrypt
    // for kernel randomness; `setting` is writable for the size we pass.
    let made = unsafe {
        crypt_gensalt_rn(
            prefix.as_ptr(),
            count,
            std::ptr::null(),
            0,
            setting.as_mut_ptr(),
            GENSALT_OUTPUT_SIZE as c_int,
        )
    };
    if made.is_null() {
        return Err(CryptError::Gensalt(method.name()));
    }
    // SAFETY: on success libcrypt wrote a NUL-terminated string into `setting`.
    Ok(unsafe { CStr::from_ptr(setting.as_ptr()) }.to_owned())
}

/// True if `password` hashes to `hash`. A hash [`check_hash`] refuses (too
/// expensive, weak, malformed) is never computed: it counts as not matching, so
/// the caller sets a fresh hash instead of stalling on an old one.
pub fn verify_password(password: &str, hash: &str) -> bool {
    if check_hash(hash).is_err() {
        return false;
    }
    let Ok(setting) = CString::new(hash) else {
        return false;
    };
    crypt(password, &setting).is_some_and(|h| constant_time_eq(h.as_bytes(), hash.as_bytes()))
}

/// Checks a hash from a file: [`check_hash`] first, so only a hash within the
/// bounds reaches libcrypt, then one crypt_r to make sure this host can check it.
pub fn check_usable_hash(hash: &str) -> Result<Method, HashError> {
    let method = check_hash(hash)?;
    let usable = CString::new(hash)
        .ok()
        .is_some_and(|setting| crypt("probe", &setting).is_some());
    if usable {
        Ok(method)
    } else {
        Err(HashError::Unsupported(method.name()))
    }
}

/// One `crypt_r` call; `None` when libcrypt refuses the setting.
fn crypt(password: &str, setting: &CStr) -> Option<String> {
    let phrase = CString::new(password).ok()?;
    let mut data = vec![0u8; CRYPT_DATA_SIZE];
    // SAFETY: both strings are valid C strings; `data` is a zeroed buffer at least
    // as large as `struct crypt_data`, as crypt_r requires on its first use.
    let out = unsafe { crypt_r(phrase.as_ptr(), setting.as_ptr(), data.as_mut_ptr()) };
    if out.is_null() {
        return None;
    }
    // SAFETY: a non-NULL result points to a NUL-terminated string inside `data`,
    // which lives until the end of this function; we copy it out before that.
    let hash = unsafe { CStr::from_ptr(out) }.to_str().ok()?.to_string();
    // libxcrypt signals failure with a string starting with '*' ("*0", "*1").
    (!hash.starts_with('*')).then_some(hash)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const ITOA64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

    /// A hash part of the right length, for strings that are checked but never hashed.
    fn tail(len: usize) -> String {
        "a".repeat(len)
    }

    /// yescrypt's variable-length integer encoding, written the other way round
    /// from [`decode_uint`] so the two check each other.
    fn encode_uint(value: u64, min: u64) -> String {
        let mut v = value - min;
        let mut scale = 1u64;
        for (k, &(low, high)) in BANDS.iter().enumerate() {
            let width = (high - low + 1) * scale;
            if v < width {
                let mut out = vec![ITOA64[(low + v / scale) as usize]];
                for i in (0..k).rev() {
                    out.push(ITOA64[((v % scale) >> (6 * i) & 63) as usize]);
                }
                return String::from_utf8(out).unwrap();
            }
            v -= width;
            scale *= 64;
        }
        panic!("{value} does not fit");
    }

    /// yescrypt's salt encoding: bytes in 24-bit little-endian groups, 6 bits a character.
    fn encode64(bytes: &[u8]) -> String {
        let mut out = String::new();
        for group in bytes.chunks(3) {
            let value = group
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (8 * i));
            for i in 0..(group.len() * 8).div_ceil(6) {
                out.push(ITOA64[(value >> (6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    /// `$7$`'s fixed 30-bit encoding: five characters, least significant first.
    fn encode_fixed30(value: u32) -> String {
        (0..5)
            .map(|i| ITOA64[(value >> (6 * i) & 63) as usize] as char)
            .collect()
    }

    fn crypt_str(password: &str, setting: &str) -> Option<String> {
        crypt(password, &CString::new(setting).unwrap())
    }

    #[test]
    fn hashes_verify_and_differ_by_salt() {
        for method in [Method::Yescrypt, Method::Sha512, Method::Sha256] {
            let a = hash_password("35oi3g4l3he", method).unwrap();
            let b = hash_password("35oi3g4l3he", method).unwrap();
            assert!(a.starts_with(method.prefix()), "{a}");
            assert_ne!(a, b, "salts must differ");
            assert!(verify_password("35oi3g4l3he", &a));
            assert!(!verify_password("35oi3g4l3hf", &a));
            assert_eq!(check_hash(&a), Ok(method), "{a}");
            assert_eq!(check_usable_hash(&a), Ok(method), "{a}");
        }
    }

    #[test]
    fn sha512_salt_is_16_characters_as_pam_unix_expects() {
        let h = hash_password("1234", Method::Sha512).unwrap();
        let salt = h.split('$').nth(2).unwrap();
        assert!(salt.len() <= 16, "{h}");
    }

    #[test]
    fn refuses_bad_hashes_and_nul() {
        assert_eq!(check_usable_hash("not-a-hash"), Err(HashError::NotAHash));
        assert!(matches!(
            check_usable_hash("$9$nonsense"),
            Err(HashError::NotAccepted { method }) if method.contains("`$9$`")
        ));
        assert!(!verify_password("x", "!"));
        assert_eq!(hash_password("a\0b", Method::Sha512), Err(CryptError::Nul));
        assert!(Method::from_name("yescrypt").is_some());
        assert!(Method::from_name("DES").is_none());
    }

    #[test]
    fn weak_and_other_methods_are_refused_by_name() {
        let weak = [
            ("$1$saltsalt$qjXMvbEw8oaL.CzflDugX/", "MD5-crypt (`$1$`)"),
            ("$3$$8846f7eaee8fb117ad06bdd830b7586c", "NT hash (`$3$`)"),
            ("$sha1$48000$mHh0IqEt$...", "PBKDF1-SHA1"),
            (
                "$md5,rounds=5000$GUBv0xjJ$$mSwgIswdjlTY0YxV7HBVm0",
                "SunMD5",
            ),
            ("$md5$zrdhpMlZ$$wBvMOEqbSjU.hu5T2VEP01", "SunMD5"),
            ("_J9..CCCCXBrJUJV154M", "BSDi extended DES"),
            ("abJnggxhB/yWI", "traditional DES"),
        ];
        for (hash, name) in weak {
            let err = check_usable_hash(hash).unwrap_err();
            assert!(
                matches!(&err, HashError::Weak { method } if method.contains(name)),
                "{hash}: {err}"
            );
            assert!(err.to_string().contains("too weak"), "{err}");
            assert!(err.to_string().contains("yescrypt (`$y$`)"), "{err}");
        }
        let other = [
            (
                "$2b$31$abcdefghijklmnopqrstuu5Wz0Z.8ac1XEQ4Ln5fXvLHG8xKjEy5e",
                "bcrypt (`$2b$`)",
            ),
            ("$2a$10$abcdefghijklmnopqrstuu", "bcrypt (`$2a$`)"),
            ("$2y$10$abcdefghijklmnopqrstuu", "bcrypt (`$2y$`)"),
            (
                "$7$CU..../....2KjvPw$WW5BggWwNI9upuXsOkMlRegRRG2647/mg.xi3Q56gi6",
                "scrypt",
            ),
            ("$gy$j9T$salt$hash", "gost-yescrypt"),
            ("$sm3y$j9T$salt$hash", "sm3-yescrypt"),
            (
                "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$hash",
                "`$argon2id$`",
            ),
        ];
        for (hash, name) in other {
            let err = check_usable_hash(hash).unwrap_err();
            assert!(
                matches!(&err, HashError::NotAccepted { method } if method.contains(name)),
                "{hash}: {err}"
            );
            assert!(err.to_string().contains("SHA-256 (`$5$`)"), "{err}");
        }
        for hash in ["", "!", "*", "!!", "x", "$"] {
            assert!(check_usable_hash(hash).is_err(), "{hash:?}");
        }
    }

    #[test]
    fn sha_rounds_are_bounded_before_anything_is_hashed() {
        // Minutes of CPU if it were ever hashed: the test would hang, not fail.
        let expensive = format!("$6$rounds=999999999$abcdefgh${}", tail(86));
        assert!(matches!(
            check_hash(&expensive),
            Err(HashError::TooExpensive { .. })
        ));
        assert!(!verify_password("x", &expensive));
        // Refused on the rounds alone, however broken the rest is.
        let err = check_usable_hash("$6$rounds=999999999$abc$def").unwrap_err();
        assert!(err.to_string().contains("rounds=999999999"), "{err}");
        assert!(err.to_string().contains("rounds=500000"), "{err}");
        let huge = format!("$5$rounds={}$abc${}", "9".repeat(40), tail(43));
        let err = check_hash(&huge).unwrap_err();
        assert!(matches!(err, HashError::TooExpensive { .. }), "{err}");
        assert!(err.to_string().len() < 200, "{err}");

        for (prefix, len) in [("$6$", 86), ("$5$", 43)] {
            let at = |rounds: &str| format!("{prefix}rounds={rounds}$saltsalt${}", tail(len));
            assert!(check_hash(&at("1000")).is_ok());
            assert!(check_hash(&at("500000")).is_ok());
            assert!(matches!(
                check_hash(&at("500001")),
                Err(HashError::TooExpensive { .. })
            ));
            for bad in ["999", "0500", "05000", "", "5x", "-5000", "+5000", " 5000"] {
                assert!(
                    matches!(check_hash(&at(bad)), Err(HashError::Malformed { .. })),
                    "rounds={bad:?}"
                );
            }
        }
    }

    #[test]
    fn sha_shape_is_checked() {
        let ok = format!("$6$saltsalt${}", tail(86));
        assert_eq!(check_hash(&ok), Ok(Method::Sha512));
        for bad in [
            "$6$".to_string(),
            "$6$$".to_string(),
            "$6$saltsalt".to_string(),
            format!("$6$${}", tail(86)),
            format!("$6$saltsalt${}", tail(85)),
            format!("$6$saltsalt${}", tail(87)),
            format!("$6$saltsalt${}!", tail(85)),
            format!("$6${}${}", "s".repeat(17), tail(86)),
            format!("$6$sa:lt${}", tail(86)),
            format!("$6$saltsalt${}", tail(43)),
            format!("$5$saltsalt${}", tail(86)),
        ] {
            assert!(
                matches!(check_hash(&bad), Err(HashError::Malformed { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn real_sha_hashes_from_libcrypt_pass_up_to_the_bound() {
        for method in [Method::Sha512, Method::Sha256] {
            for rounds in [1_000, 5_000, 100_000, SHA_MAX_ROUNDS] {
                let h = hash_with_cost("35oi3g4l3he", method, rounds as c_ulong).unwrap();
                assert_eq!(check_usable_hash(&h), Ok(method), "{h}");
                assert!(verify_password("35oi3g4l3he", &h), "{h}");
            }
            // Made but never hashed: only the setting.
            let s = gensalt(method, (SHA_MAX_ROUNDS + 1) as c_ulong).unwrap();
            let h = format!("{}${}", s.to_str().unwrap(), tail(method_len(method)));
            assert!(
                matches!(check_hash(&h), Err(HashError::TooExpensive { .. })),
                "{h}"
            );
        }
    }

    fn method_len(method: Method) -> usize {
        match method {
            Method::Sha512 => SHA512_HASH_LEN,
            Method::Sha256 => SHA256_HASH_LEN,
            Method::Yescrypt => YESCRYPT_HASH_LEN,
        }
    }

    #[test]
    fn yescrypt_parameters_decode_as_libcrypt_encodes_them() {
        // libxcrypt's costs 1-11: r=8 and N=2^(cost+9) below 3, else r=32 and N=2^(cost+7).
        for cost in 1..=11u32 {
            let setting = gensalt(Method::Yescrypt, c_ulong::from(cost)).unwrap();
            let setting = setting.to_str().unwrap();
            let field = setting["$y$".len()..].split('$').next().unwrap();
            let p = decode_yescrypt_params(field).unwrap();
            let (n_log2, r) = if cost < 3 {
                (cost + 9, 8)
            } else {
                (cost + 7, 32)
            };
            assert_eq!(
                p,
                YescryptParams {
                    flavor: 47,
                    n_log2: u64::from(n_log2),
                    r,
                    p: 1,
                    t: 0
                },
                "{setting}"
            );
            let hash = format!("{setting}${}", tail(43));
            let checked = check_hash(&hash);
            if cost <= YESCRYPT_MAX_COST {
                assert_eq!(checked, Ok(Method::Yescrypt), "{hash}");
            } else {
                let err = checked.unwrap_err();
                assert!(matches!(err, HashError::TooExpensive { .. }), "{err}");
                assert!(err.to_string().contains("cost 8"), "{err}");
            }
        }
        assert_eq!(
            decode_yescrypt_params("j9T").map(|p| (p.n_log2, p.r)),
            Ok((12, 32))
        );
    }

    #[test]
    fn real_yescrypt_hashes_pass_up_to_the_bound() {
        for cost in 1..=YESCRYPT_MAX_COST {
            let h = hash_with_cost("35oi3g4l3he", Method::Yescrypt, c_ulong::from(cost)).unwrap();
            assert_eq!(check_usable_hash(&h), Ok(Method::Yescrypt), "{h}");
            assert!(verify_password("35oi3g4l3he", &h), "{h}");
        }
        // Over the bound: refused, and never hashed (2 s and 1 GiB at cost 11).
        let s = gensalt(Method::Yescrypt, 11).unwrap();
        let h = format!("{}${}", s.to_str().unwrap(), tail(43));
        assert!(!verify_password("35oi3g4l3he", &h));
    }

    #[test]
    fn variable_length_integers_round_trip() {
        for value in [
            0u64,
            1,
            47,
            48,
            49,
            559,
            560,
            561,
            16_943,
            16_944,
            541_231,
            541_232,
            17_318_447,
            17_318_448,
            1_091_060_271,
        ] {
            let text = encode_uint(value, 0);
            assert_eq!(
                decode_uint(&mut text.bytes(), 0),
                Some(value),
                "{value} as {text}"
            );
            assert_eq!(decode_uint(&mut text.bytes(), 3), Some(value + 3));
        }
        assert_eq!(decode_uint(&mut "".bytes(), 0), None);
        assert_eq!(
            decode_uint(&mut "z".bytes(), 0),
            None,
            "a character is missing"
        );
        assert_eq!(decode_uint(&mut "!".bytes(), 0), None);
    }

    #[test]
    fn multi_character_parameters_agree_with_libcrypt() {
        // Flavor 0 is classic scrypt, which libcrypt also computes as `$7$` with
        // r and p in a fixed encoding: the same hash from both settings shows
        // that our reading of r=100 and p=70 (two characters each) is libcrypt's.
        let (n_log2, r, p) = (4u32, 100u32, 70u32);
        let salt = b"saltsalt";
        let seven = format!(
            "$7${}{}{}{}",
            ITOA64[n_log2 as usize] as char,
            encode_fixed30(r),
            encode_fixed30(p),
            std::str::from_utf8(salt).unwrap()
        );
        let field = format!(
            "{}{}{}{}{}",
            encode_uint(0, 0),
            encode_uint(n_log2.into(), 1),
            encode_uint(r.into(), 1),
            encode_uint(1, 1),
            encode_uint(p.into(), 2)
        );
        assert_eq!(field.len(), 7, "{field}");
        let y = format!("$y${field}${}", encode64(salt));
        let a = crypt_str("pw", &seven).unwrap();
        let b = crypt_str("pw", &y).unwrap();
        assert_eq!(a.rsplit('$').next(), b.rsplit('$').next(), "{a} {b}");
        assert_eq!(
            decode_yescrypt_params(&field),
            Ok(YescryptParams {
                flavor: 0,
                n_log2: 4,
                r: 100,
                p: 70,
                t: 0
            })
        );
        assert_eq!(check_usable_hash(&b), Ok(Method::Yescrypt), "{b}");
    }

    #[test]
    fn yescrypt_p_and_t_count_against_the_bound() {
        let with = |n_log2: u64, r: u64, p: u64, t: u64| {
            let have = u64::from(p != 1) | u64::from(t != 0) << 1;
            let mut field = format!(
                "{}{}{}",
                encode_uint(47, 0),
                encode_uint(n_log2, 1),
                encode_uint(r, 1)
            );
            if have != 0 {
                field.push_str(&encode_uint(have, 1));
            }
            if p != 1 {
                field.push_str(&encode_uint(p, 2));
            }
            if t != 0 {
                field.push_str(&encode_uint(t, 1));
            }
            format!("$y${field}${}", encode64(b"0123456789abcdef"))
        };
        // Cheap ones libcrypt really computes, with every optional field.
        for (p, t) in [(1, 1), (2, 0), (4, 2)] {
            let setting = with(10, 8, p, t);
            let hash = crypt_str("pw", &setting).unwrap();
            assert_eq!(check_usable_hash(&hash), Ok(Method::Yescrypt), "{hash}");
            let field = &setting[3..setting[3..].find('$').unwrap() + 3];
            let decoded = decode_yescrypt_params(field).unwrap();
            assert_eq!((decoded.p, decoded.t), (p, t));
        }
        let hash = |n_log2, r, p, t| format!("{}${}", with(n_log2, r, p, t), tail(43));
        assert!(check_hash(&hash(15, 32, 1, 0)).is_ok(), "cost 8");
        assert!(check_hash(&hash(12, 32, 1, 1)).is_ok(), "cost 5, t=1");
        for (n_log2, r, p, t) in [
            (16, 32, 1, 0),
            (15, 33, 1, 0),
            (15, 32, 2, 0),
            (15, 32, 1, 1),
            (12, 32, 1, 1000),
            (12, 32, 1_000_000, 0),
            (4, 1_000_000_000, 1, 0),
            (63, 1_000_000_000, 1_000_000_000, 1_000_000_000),
        ] {
            assert!(
                matches!(
                    check_hash(&hash(n_log2, r, p, t)),
                    Err(HashError::TooExpensive { .. })
                ),
                "N=2^{n_log2} r={r} p={p} t={t}"
            );
        }
    }

    #[test]
    fn malformed_yescrypt_is_refused() {
        let salt = encode64(b"0123456789abcdef");
        let bad = [
            format!("$y$j9${salt}${}", tail(43)),    // r missing
            format!("$y$j9T!${salt}${}", tail(43)),  // not base-64
            format!("$y$j9T/${salt}${}", tail(43)),  // t announced, missing
            format!("$y$j9T1.${salt}${}", tail(43)), // g: hash upgrades
            format!("$y$j9T5.${salt}${}", tail(43)), // NROM: a ROM
            format!("$y$j9TU.${salt}${}", tail(43)), // unknown field bits
            format!("$y$.z.${salt}${}", tail(43)),   // N too large to decode: z then missing char
            format!("$y$j.T${salt}${}", tail(43)),   // N = 2
            format!("$y$j{}T${salt}${}", encode_uint(64, 1), tail(43)), // N = 2^64
            format!("$y${}9T${salt}${}", encode_uint(258, 0), tail(43)), // flavor
            format!("$y$j9T${salt}"),
            format!("$y$j9T$${}", tail(43)),
            format!("$y$j9T${salt}${}", tail(42)),
            format!("$y$j9T$sa:lt${}", tail(43)),
            "$y$j9T".to_string(),
            "$y$".to_string(),
        ];
        for hash in bad {
            assert!(
                matches!(check_hash(&hash), Err(HashError::Malformed { .. })),
                "{hash}: {:?}",
                check_hash(&hash)
            );
        }
    }
}
