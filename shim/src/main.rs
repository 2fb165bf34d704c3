//! The eci-shim binary. The agent starts one per group (`start`); the shim re-executes
//! itself as `init` to become each container's first process.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("init") => match args.get(1) {
            Some(config) => eci_runtime::init::main(Path::new(config)),
            None => {
                eprintln!("usage: eci-shim init CONFIG");
                ExitCode::from(2)
            }
        },
        Some("start") => {
            let parsed = eci_shim::start::StartArgs::parse(&args[1..]);
            match parsed.and_then(eci_shim::start::main) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("eci-shim: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("--version" | "-V") => {
            println!("eci-shim {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "usage: eci-shim start --id ID --run-dir DIR --hostname NAME --cpu-millis N --memory-bytes N\n\
                 \x20      [--sandbox namespaced|vm --vm-config GROUP_DIR/vm.json]\n\
                 eci-shim is started by eci-agent, one per container group"
            );
            ExitCode::from(2)
        }
    }
}
