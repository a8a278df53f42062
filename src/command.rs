//! Running the host's tools (useradd, chpasswd, ssh-keygen, ...): input on
//! stdin, never on the command line; stderr kept as the error message.

use std::io::Write;
use std::process::{Command, Stdio};

/// A tool that could not be run or said no.
#[derive(Debug, thiserror::Error)]
#[error("`{command}` failed: {message}")]
pub struct CommandError {
    pub command: String,
    pub message: String,
}

/// Runs `program` with `args` in the C locale, `input` on its stdin, and
/// returns its stdout. A non-zero exit is an error carrying its stderr.
pub fn run(program: &str, args: &[&str], input: Option<&[u8]>) -> Result<String, CommandError> {
    let command = format!("{program} {}", args.join(" "));
    let failed = |message: String| CommandError {
        command: command.clone(),
        message,
    };
    let mut child = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(data).map_err(|e| failed(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let message = crate::logging::one_line(&String::from_utf8_lossy(&out.stderr));
        Err(failed(if message.is_empty() {
            out.status.to_string()
        } else {
            message
        }))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn output_and_errors() {
        assert_eq!(super::run("cat", &[], Some(b"in")).unwrap(), "in");
        let err = super::run("sh", &["-c", "echo no >&2; exit 3"], None).unwrap_err();
        assert_eq!(err.to_string(), "`sh -c echo no >&2; exit 3` failed: no");
        assert!(super::run("/nonexistent/tool", &[], None).is_err());
    }
}
