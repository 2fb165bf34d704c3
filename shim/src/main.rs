//! The eci-shim binary. The agent starts one per group; it is not run by hand.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version" || a == "-V") {
        println!("eci-shim {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "eci-shim is started by eci-agent, one per container group, and takes no arguments \
         from a person; this build has no sandbox backend to serve yet"
    );
    ExitCode::from(2)
}
