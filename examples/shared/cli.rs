//! What every example does with its result: an error becomes one line on stderr and exit
//! status 1.

use std::process::ExitCode;

/// `Ok` exits 0; an error prints `error: <message>` (its `Display`, not its `Debug` form) and
/// exits 1.
pub fn exit<E: std::fmt::Display>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
