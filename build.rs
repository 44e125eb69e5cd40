// Generates the gRPC services (tonic + prost) and their proto3-JSON serde impls (pbjson) from proto/, and builds
// the web dashboard (clients/dashboard) into OUT_DIR so the binary can embed it.
// protoc comes from the protoc-bin-vendored crate, so no system protoc is needed.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out.join("whatisup_descriptor.bin");
    let protos = [
        "proto/whatisup/v1/channels.proto",
        "proto/whatisup/v1/sandbox.proto",
        "proto/whatisup/v1/events.proto",
        "proto/whatisup/v1/api_keys.proto",
        "proto/whatisup/v1/webhooks.proto",
        "proto/whatisup/v1/messages.proto",
        "proto/whatisup/v1/media.proto",
        "proto/whatisup/v1/audit.proto",
        "proto/whatisup/v1/limits.proto",
    ];
    let mut prost_config = tonic_prost_build::Config::new();
    prost_config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        // pbjson-types prints "+00:00"; our Timestamp prints the canonical "Z".
        .extern_path(".google.protobuf.Timestamp", "crate::wkt::Timestamp")
        .compile_with_config(prost_config, &protos, &["proto"])?;
    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .extern_path(".google.protobuf.Timestamp", "crate::wkt::Timestamp")
        // The contract's JSON is snake_case, and shows every field (null when unset).
        .preserve_proto_field_names()
        .emit_fields()
        .build(&[".whatisup"])?;
    println!("cargo:rerun-if-changed=proto");

    dashboard(&out);
    Ok(())
}

/// Builds the dashboard bundle into OUT_DIR/dashboard (app.js). Cargo reruns this only when the dashboard's
/// sources, its lock file or proto/ change, so an unchanged tree costs nothing.
fn dashboard(out: &Path) {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let dir = root.join("clients/dashboard");
    for p in [
        "clients/dashboard/src",
        "clients/dashboard/static",
        "clients/dashboard/package.json",
        "clients/dashboard/package-lock.json",
        "clients/dashboard/buf.gen.yaml",
        "clients/dashboard/tsconfig.json",
    ] {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-env-changed=WHATISUP_SKIP_DASHBOARD");
    println!("cargo::rustc-check-cfg=cfg(whatisup_no_dashboard)");
    if std::env::var("WHATISUP_SKIP_DASHBOARD").is_ok_and(|v| v == "1") {
        println!(
            "cargo:warning=WHATISUP_SKIP_DASHBOARD=1: building without the dashboard (`/` answers 503)"
        );
        println!("cargo:rustc-cfg=whatisup_no_dashboard");
        return;
    }
    for tool in ["node", "npm"] {
        let found = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            fail(&format!(
                "`{tool}` was not found. The web dashboard is built with Node.js (20 or newer) and npm: install \
                 them (Debian/Ubuntu: `apt-get install nodejs npm`), or build without the dashboard with \
                 WHATISUP_SKIP_DASHBOARD=1."
            ));
        }
    }
    // Several cargo invocations (build, test, clippy) may run this at once; npm ci must not race itself.
    let _lock = DirLock::acquire(&dir.join(".build-lock"));
    npm_ci_if_needed(&dir);

    let target = out.join("dashboard");
    let _ = std::fs::remove_dir_all(&target);
    if let Err(e) = std::fs::create_dir_all(&target) {
        fail(&format!("cannot create {}: {e}", target.display()));
    }
    let bin = |name: &str| dir.join("node_modules/.bin").join(name);
    // TypeScript from proto/ (protoc-gen-es, a local plugin: no network).
    run(
        Command::new(bin("buf"))
            .current_dir(&dir)
            .env("PATH", prepend_path(&dir.join("node_modules/.bin")))
            .args(["generate", "--template", "buf.gen.yaml", "--output"])
            .arg(&target),
        "buf generate (TypeScript from proto/)",
    );
    // The bundle: generated code is imported as `whatisup-gen/...`; its own imports resolve through NODE_PATH.
    let node_modules = dir.join("node_modules");
    run(
        Command::new(bin("esbuild"))
            .current_dir(&dir)
            .env("NODE_PATH", &node_modules)
            .args([
                "src/main.ts",
                "--bundle",
                "--format=iife",
                "--minify",
                "--target=es2020",
                "--log-level=warning",
            ])
            .arg(format!(
                "--alias:whatisup-gen={}",
                target.join("gen").display()
            ))
            .arg(format!("--outfile={}", target.join("app.js").display())),
        "esbuild (the dashboard bundle)",
    );
}

/// `npm ci` when node_modules is missing or was installed from another package-lock.json.
fn npm_ci_if_needed(dir: &Path) {
    let lock = match std::fs::read(dir.join("package-lock.json")) {
        Ok(l) => l,
        Err(e) => fail(&format!("clients/dashboard/package-lock.json: {e}")),
    };
    let stamp = dir.join("node_modules/.whatisup-package-lock.json");
    if std::fs::read(&stamp).is_ok_and(|s| s == lock)
        && dir.join("node_modules/.bin/esbuild").exists()
    {
        return;
    }
    run(
        Command::new("npm")
            .current_dir(dir)
            // No install scripts: esbuild and buf ship their binaries as optional dependencies.
            .args([
                "ci",
                "--ignore-scripts",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
            ]),
        "npm ci (the dashboard's dependencies; needs the npm registry once)",
    );
    if let Err(e) = std::fs::write(&stamp, &lock) {
        fail(&format!("cannot write {}: {e}", stamp.display()));
    }
}

fn prepend_path(dir: &Path) -> std::ffi::OsString {
    let mut paths = vec![dir.to_path_buf()];
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

fn run(cmd: &mut Command, what: &str) {
    match cmd.output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => fail(&format!(
            "{what} failed ({}):\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => fail(&format!("{what} could not start: {e}")),
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: building the web dashboard: {msg}");
    panic!("building the web dashboard: {msg}");
}

/// A lock directory (mkdir is atomic); one left by a killed build is taken over after 10 minutes.
struct DirLock(PathBuf);

impl DirLock {
    fn acquire(path: &Path) -> DirLock {
        loop {
            match std::fs::create_dir(path) {
                Ok(()) => return DirLock(path.to_path_buf()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = std::fs::metadata(path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .is_some_and(|age| age > Duration::from_secs(600));
                    if stale {
                        let _ = std::fs::remove_dir(path);
                    } else {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
                Err(e) => fail(&format!("cannot create {}: {e}", path.display())),
            }
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}
