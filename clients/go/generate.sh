#!/usr/bin/env bash
# Regenerates whatisuppb/ from ../../proto with protoc, protoc-gen-go and protoc-gen-go-grpc (Debian:
# apt-get install protobuf-compiler protoc-gen-go protoc-gen-go-grpc). The protos carry no go_package: the import
# path is given here (M options), so proto/ stays language-neutral.
#   ./generate.sh           writes whatisuppb/
#   ./generate.sh --check   fails when the committed code differs from what the protos generate
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
module="github.com/whatisup/whatisup/clients/go"
pkg="$module/whatisuppb"

for tool in protoc protoc-gen-go protoc-gen-go-grpc; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "generate.sh: $tool not found (Debian: apt-get install protobuf-compiler protoc-gen-go protoc-gen-go-grpc)" >&2
    exit 1
  }
done

cd "$root/proto"
mapfile -t protos < <(find whatisup -name '*.proto' | LC_ALL=C sort)
maps=""
for p in "${protos[@]}"; do maps+=",M$p=$pkg"; done

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
protoc -I . \
  --go_out="$out" --go_opt="module=$module$maps" \
  --go-grpc_out="$out" --go-grpc_opt="module=$module$maps" \
  "${protos[@]}"

if [ "${1:-}" = "--check" ]; then
  if ! diff -r "$out/whatisuppb" "$here/whatisuppb" >/dev/null; then
    diff -ru "$here/whatisuppb" "$out/whatisuppb" | head -n 40 >&2 || true
    echo "clients/go/whatisuppb is out of date with proto/: run clients/go/generate.sh and commit the result" >&2
    exit 1
  fi
  echo "clients/go/whatisuppb is current"
  exit 0
fi
rm -rf "$here/whatisuppb"
cp -r "$out/whatisuppb" "$here/whatisuppb"
echo "wrote $(ls "$here/whatisuppb" | wc -l) files to clients/go/whatisuppb"
