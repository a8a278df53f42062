use std::process::ExitCode;

fn main() -> ExitCode {
    sftp_ha::cli::main()
}
