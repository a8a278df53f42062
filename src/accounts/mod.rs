//! Accounts from users.yaml: parsing, validation and planning (pure), and
//! applying a plan to the host's real account database (system).

pub mod crypt;
pub mod users_file;
pub mod plan;
