#!/usr/bin/env bash
# Compile-checks and tests this module with no module proxy: a copy of it in WORKDIR gets a vendor/ directory
# made of Debian's Go sources (/usr/share/gocode/src, from golang-google-grpc-dev, golang-google-protobuf-dev,
# golang-github-golang-protobuf-1-5-dev and their dependencies), then `go vet`, `go build` and `go test -v` run in
# module mode with -mod=vendor, so go.mod's module path and requirements are checked too. It first checks that
# whatisuppb/ is what generate.sh makes of proto/.
#   check-offline.sh WORKDIR        (tests/client_go.rs passes target/go-client-check)
# TestAgainstGateway runs when WHATISUP_TARGET and WHATISUP_API_KEY are set, and is skipped otherwise.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${1:?usage: check-offline.sh WORKDIR}"
src=/usr/share/gocode/src

command -v go >/dev/null 2>&1 || { echo "check-offline.sh: go not found (Debian: apt-get install golang-go)" >&2; exit 1; }
for m in google.golang.org/grpc google.golang.org/protobuf github.com/golang/protobuf; do
  [ -d "$src/$m" ] || {
    echo "check-offline.sh: $src/$m is missing (Debian: apt-get install golang-google-grpc-dev" \
      "golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev)" >&2
    exit 1
  }
done

"$here/generate.sh" --check

rm -rf "$work"
mkdir -p "$work"
cp -r "$here/go.mod" "$here/whatisup" "$here/whatisuppb" "$work/"
cd "$work"
mkdir vendor
# The versions go.mod requires must be the ones vendored (Go checks them); the other modules are reached through
# grpc and are not in go.mod (go 1.16 semantics), so their version strings are informational.
version() { awk -v m="$1" '$1 == m { print $2 }' go.mod; }
{
  for m in google.golang.org/grpc google.golang.org/protobuf github.com/golang/protobuf golang.org/x/net \
    golang.org/x/sys golang.org/x/text google.golang.org/genproto; do
    [ -d "$src/$m" ] || { echo "check-offline.sh: $src/$m is missing" >&2; exit 1; }
    mkdir -p "vendor/$(dirname "$m")"
    ln -s "$src/$m" "vendor/$m"
    v="$(version "$m")"
    if [ -n "$v" ]; then
      printf '# %s %s\n## explicit; go 1.18\n' "$m" "$v"
    else
      printf '# %s v0.0.0\n## go 1.18\n' "$m"
    fi
    (cd "$src/$m" && find . -name '*.go' ! -name '*_test.go' -printf '%h\n' | LC_ALL=C sort -u |
      grep -vE '/(testdata|cmd|examples|interop|benchmark|test|testutil|internal/testprotos)(/|$)' |
      sed "s#^\.#$m#; s#/\$##")
  done
} > vendor/modules.txt

export GOFLAGS=-mod=vendor GOPROXY=off GONOSUMDB=* GOTOOLCHAIN=local
go version
go vet ./...
go build ./...
go test -count=1 -v ./...
