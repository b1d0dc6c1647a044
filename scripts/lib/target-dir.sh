# Sourced: `cargo_target_dir` prints cargo's target folder as cargo itself resolves it
# ($CARGO_TARGET_DIR, a .cargo/config.toml build.target-dir, or <workspace>/target).
cargo_target_dir() {
    cargo metadata --no-deps --format-version 1 \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}
