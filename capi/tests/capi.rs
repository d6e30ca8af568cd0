//! The C ABI tested as apps use it: the C programs in tests/c/ (and the C++ example in
//! examples/) are compiled with the system C compiler (`$CC`, default `cc`; `$CXX`, default
//! `c++`), linked against the libplumb.so / libplumb.a that cargo built for this test, and run
//! on the fixture model (models/fixtures/tiny-gpt2) with a 64-word tokenizer
//! (tests/c/fixtures/words64). One of them, tests/c/errors.c, also runs under valgrind.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("repository root")
}

/// Where cargo put libplumb.so and libplumb.a for this test (beside the test binary).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().expect("deps dir").to_path_buf();
    assert!(dir.join("libplumb.so").exists(), "{}: no libplumb.so: run `cargo build -p plumb-capi` before `cargo test -p plumb-capi`", dir.display());
    dir
}

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("capi-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("--- {what}\n{text}");
    assert!(out.status.success(), "{what} failed ({}):\n{text}", out.status);
    text
}

/// Compile `source` (C, or C++ when it ends in .cpp) into `exe`, linked dynamically to
/// libplumb.so (or statically to libplumb.a when `static_link`).
fn compile(source: &str, exe: &Path, static_link: bool) {
    let root = root();
    let libs = lib_dir();
    let cpp = source.ends_with(".cpp");
    let compiler = if cpp { std::env::var("CXX").unwrap_or("c++".into()) } else { std::env::var("CC").unwrap_or("cc".into()) };
    let mut cmd = Command::new(&compiler);
    cmd.args(if cpp { &["-std=c++17"][..] } else { &["-std=c11"][..] });
    cmd.args(["-Wall", "-Wextra", "-Werror", "-g", "-O0"]);
    cmd.arg("-I").arg(root.join("include")).arg("-I").arg(root.join("tests/c"));
    cmd.arg(root.join(source)).arg("-o").arg(exe);
    if static_link {
        // What `rustc --print native-static-libs` lists for this target (Linux, glibc).
        cmd.arg(libs.join("libplumb.a")).args(["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl", "-lc"]);
    } else {
        cmd.arg("-L").arg(&libs).arg("-lplumb").arg(format!("-Wl,-rpath,{}", libs.display()));
    }
    cmd.args(["-pthread", "-lm"]);
    run(&mut cmd, &format!("compile {source}"));
}

fn model_args() -> [String; 2] {
    let root = root();
    [root.join("models/fixtures/tiny-gpt2"), root.join("tests/c/fixtures/words64/tokenizer.json")].map(|p| p.display().to_string())
}

fn env_cmd(exe: &Path) -> Command {
    let mut c = Command::new(exe);
    c.env("XDG_RUNTIME_DIR", std::env::var("XDG_RUNTIME_DIR").unwrap_or("/tmp".into()));
    c
}

#[test]
fn c_error_paths_and_cpu_calls() {
    let dir = scratch("errors");
    let exe = dir.join("errors");
    compile("tests/c/errors.c", &exe, false);
    let out = run(env_cmd(&exe).args(model_args()).arg(&dir), "errors");
    assert!(out.contains("errors: all passed"));
}

#[test]
fn c_error_paths_under_valgrind() {
    let have = Command::new("valgrind").arg("--version").output().is_ok_and(|o| o.status.success());
    if !have {
        assert!(std::env::var("CI").is_err(), "CI must have valgrind (.ci/run installs it)");
        eprintln!("valgrind not installed: skipped");
        return;
    }
    let dir = scratch("valgrind");
    let exe = dir.join("errors");
    compile("tests/c/errors.c", &exe, false);
    let out = run(
        env_cmd(Path::new("valgrind"))
            .args(["--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite", "--show-leak-kinds=definite", "--track-fds=no"])
            .arg(&exe)
            .args(model_args())
            .arg(&dir),
        "errors under valgrind",
    );
    assert!(out.contains("errors: all passed"));
    assert!(out.contains("ERROR SUMMARY: 0 errors"), "valgrind found errors");
}

#[test]
fn c_static_link() {
    let dir = scratch("static");
    let exe = dir.join("errors-static");
    compile("tests/c/errors.c", &exe, true);
    let out = run(env_cmd(&exe).args(model_args()).arg(&dir), "errors (libplumb.a)");
    assert!(out.contains("errors: all passed"));
}

#[test]
fn c_app_generate_dpo_cancel_resume_adapter() {
    let dir = scratch("app");
    let exe = dir.join("app");
    compile("tests/c/app.c", &exe, false);
    let out = run(env_cmd(&exe).args(model_args()).arg(&dir), "app");
    assert!(out.contains("app: all passed"));
}

#[test]
fn c_two_models_on_two_threads() {
    let dir = scratch("threads");
    let exe = dir.join("threads");
    compile("tests/c/threads.c", &exe, false);
    let out = run(env_cmd(&exe).args(model_args()), "threads");
    assert!(out.contains("threads: all passed"));
}

#[test]
fn cpp_example_builds_and_runs() {
    let dir = scratch("cpp");
    let exe = dir.join("plumb_app");
    compile("examples/plumb_app.cpp", &exe, false);
    let out = run(env_cmd(&exe).args(model_args()), "examples/plumb_app.cpp");
    assert!(out.contains("trained: {") && out.contains("after: "));
}
