#!/usr/bin/env bash
# Regenerates the man pages and shell completions under packaging/ from the clap definitions
# (run after changing a flag; crates/cli/tests/package.rs fails while they are stale).
# Usage: bash packaging/generate.sh [PATH-TO-TFTPX]   (default: builds the debug binary)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-}
if [ -z "$bin" ]; then
    cargo build -q -p tftpx-cli
    bin=target/debug/tftpx
fi
mkdir -p packaging/man packaging/completions
"$bin" man >packaging/man/tftpx.1
for cmd in serve get put completions; do
    "$bin" man "$cmd" >"packaging/man/tftpx-$cmd.1"
done
"$bin" completions bash >packaging/completions/tftpx.bash
"$bin" completions zsh >packaging/completions/_tftpx
"$bin" completions fish >packaging/completions/tftpx.fish
echo "packaging/man and packaging/completions regenerated with $bin"
