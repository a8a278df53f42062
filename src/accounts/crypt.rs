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

/// Hashes `password` with a fresh salt for `method`.
pub fn hash_password(password: &str, method: Method) -> Result<String, CryptError> {
    if password.contains('\0') {
        return Err(CryptError::Nul);
    }
    let prefix = CString::new(method.prefix()).map_err(|_| CryptError::Nul)?;
    let mut setting = vec![0 as c_char; GENSALT_OUTPUT_SIZE];
    // SAFETY: `prefix` is a valid C string; rbytes NULL with nrbytes 0 asks libcrypt
    // for kernel randomness; `setting` is writable for the size we pass.
    let made = unsafe {
        crypt_gensalt_rn(
            prefix.as_ptr(),
            0,
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
    let setting = unsafe { CStr::from_ptr(setting.as_ptr()) }.to_owned();
    crypt(password, &setting).ok_or(CryptError::Hash)
}

/// True if `password` hashes to `hash` (a crypt string of any method the host knows).
pub fn verify_password(password: &str, hash: &str) -> bool {
    let Ok(setting) = CString::new(hash) else {
        return false;
    };
    crypt(password, &setting).is_some_and(|h| constant_time_eq(h.as_bytes(), hash.as_bytes()))
}

/// True if the host's libcrypt can check passwords against `hash` (its method is
/// supported and the string is well-formed).
pub fn hash_is_supported(hash: &str) -> bool {
    if !hash.starts_with('$') {
        // DES and other prefix-less methods are refused: too weak to accept.
        return false;
    }
    let Ok(setting) = CString::new(hash) else {
        return false;
    };
    crypt("probe", &setting).is_some()
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

    #[test]
    fn hashes_verify_and_differ_by_salt() {
        for method in [Method::Yescrypt, Method::Sha512, Method::Sha256] {
            let a = hash_password("35oi3g4l3he", method).unwrap();
            let b = hash_password("35oi3g4l3he", method).unwrap();
            assert!(a.starts_with(method.prefix()), "{a}");
            assert_ne!(a, b, "salts must differ");
            assert!(verify_password("35oi3g4l3he", &a));
            assert!(!verify_password("35oi3g4l3hf", &a));
            assert!(hash_is_supported(&a));
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
        assert!(!hash_is_supported("not-a-hash"));
        assert!(!hash_is_supported("$9$nonsense"));
        assert!(!hash_is_supported("abJnggxhB/yWI")); // DES
        assert!(!verify_password("x", "!"));
        assert_eq!(hash_password("a\0b", Method::Sha512), Err(CryptError::Nul));
        assert!(Method::from_name("yescrypt").is_some());
        assert!(Method::from_name("DES").is_none());
    }
}
