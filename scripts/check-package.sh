#!/usr/bin/env bash
# The crate as crates.io would get it: `cargo publish --dry-run` (manifest, metadata, include
# rules), then the packaged .crate unpacked outside the checkout and built there, library and
# examples, with default features and with capi,tools, failing on any missing-docs warning.
# The build shares the release target dir, so llama.cpp is not compiled again (cargo's own
# verification step would build it once more in the dev profile, ~10 minutes here).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/target-dir.sh
target=$(cargo_target_dir)
fail() { echo "check-package: FAIL: $*" >&2; exit 1; }

cargo publish --dry-run --no-verify --allow-dirty -p pardec 2>&1 | tee "$target/publish-dry-run.log" | grep -E "^(warning|error)" || true
grep -q "aborting upload due to dry run" "$target/publish-dry-run.log" || fail "cargo publish --dry-run did not get to the upload step"
if grep -E "^warning: manifest has no|^error" "$target/publish-dry-run.log"; then fail "manifest problems above"; fi

version=$(cargo metadata --no-deps --format-version 1 | python3 -c 'import json,sys; print([p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "pardec"][0])')
cargo package --no-verify --allow-dirty --quiet -p pardec
crate="$target/package/pardec-$version.crate"
[[ -f $crate ]] || fail "no $crate"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$crate" -C "$tmp"
for unwanted in scripts bindings-python training adapters .ci docs cli; do
    [[ ! -e $tmp/pardec-$version/$unwanted ]] || fail "the package ships $unwanted/"
done
for features in "" "capi,tools"; do
    log="$tmp/build-${features:-default}.log"
    (cd "$tmp/pardec-$version" && CARGO_TARGET_DIR="$target" cargo build --release --lib --examples \
        ${features:+--features "$features"} > "$log" 2>&1) || { tail -30 "$log" >&2; fail "the packaged crate does not build (features: ${features:-default})"; }
    if grep -E "^warning" "$log" | grep -v "^warning: pardec@" ; then
        fail "warnings building the packaged crate (features: ${features:-default})"
    fi
done
echo "check-package: pardec $version packages ($(tar -tzf "$crate" | wc -l) files) and builds from the .crate without warnings"
