//! Writes an OCI image archive built from the host's static busybox, for demos and
//! benchmarks on machines without a registry: `eci-mkimage OUT.tar REFERENCE`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out, reference] = args.as_slice() else {
        eprintln!(
            "usage: eci-mkimage OUT.tar REFERENCE   (needs /bin/busybox from busybox-static)"
        );
        return ExitCode::from(2);
    };
    let layer = match eci_tests::oci::busybox_layer() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("eci-mkimage: reading /bin/busybox: {e} (install busybox-static)");
            return ExitCode::FAILURE;
        }
    };
    let image = eci_tests::oci::Image {
        layers: vec![layer],
        cmd: vec!["sh".into()],
        ..Default::default()
    };
    if let Err(e) = std::fs::write(out, eci_tests::oci::archive(&image, Some(reference))) {
        eprintln!("eci-mkimage: writing {out}: {e}");
        return ExitCode::FAILURE;
    }
    println!("wrote {out} ({reference})");
    ExitCode::SUCCESS
}
