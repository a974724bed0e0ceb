#!/usr/bin/env bash
# Makes, in DIR, what the seed examples read: app-example-com-crt.pem and
# app-example-com-key.pem (a leaf for app.example.com), and ca.pem, the CA that signed it.
# Used by the installed-package checks of scripts/test-python.sh and scripts/test-node.sh.
set -euo pipefail
dir="$1"
mkdir -p "$dir"
cd "$dir"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -subj "/CN=seed test CA" -days 1 2>/dev/null
openssl req "${ec[@]}" -keyout app-example-com-key.pem -out app.csr -subj "/CN=app.example.com" 2>/dev/null
printf 'subjectAltName=DNS:app.example.com\nbasicConstraints=CA:FALSE\nauthorityKeyIdentifier=keyid\n' > app.ext
openssl x509 -req -in app.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile app.ext \
  -out app-example-com-crt.pem 2>/dev/null
