//! The eci-guest binary: `/init` of the guest's initramfs, and, re-executed as
//! `eci-guest init CONFIG`, each container's first process (as `eci-shim init`).

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("init") => match args.get(1) {
            Some(config) => eci_runtime::init::main(Path::new(config)),
            None => {
                eprintln!("usage: eci-guest init CONFIG");
                ExitCode::from(2)
            }
        },
        Some("--version" | "-V") => {
            println!("eci-guest {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ if std::process::id() == 1 => eci_guest::pid1::main(&args),
        _ => {
            eprintln!(
                "usage: eci-guest init CONFIG\n\
                 eci-guest is /init of the vm sandbox's guest (PID 1); see docs/vm.md"
            );
            ExitCode::from(2)
        }
    }
}
