#!/usr/bin/env bash
# Makes a development CA and a server certificate for HOST and *.HOST (default
# bib.localhost), for running Portvakt with TLS on a developer's machine or in tests.
#
# DEVELOPMENT AND TEST MATERIAL ONLY. Never use these keys in production.
#
# Usage: certs/make-dev-certs.sh [OUT_DIR]      (default: certs/dev/, git-ignored)
#        PORTVAKT_DEV_HOST=bib.test certs/make-dev-certs.sh /tmp/certs
#
# An existing ca.key/ca.crt in OUT_DIR is reused, so a CA already trusted in a browser
# stays trusted when the server certificate is made again.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/dev}"
host="${PORTVAKT_DEV_HOST:-bib.localhost}"

command -v openssl >/dev/null || {
    echo "make-dev-certs: openssl is not installed (Debian: apt-get install openssl)" >&2
    exit 1
}
case "$host" in
    *[!a-z0-9.-]* | "" | .* | *. )
        echo "make-dev-certs: PORTVAKT_DEV_HOST must be a plain DNS name, got '$host'" >&2
        exit 1 ;;
esac

# Keys are created readable by their owner only.
umask 077
mkdir -p "$out"
cd "$out"

if [[ -f ca.key && -f ca.crt ]]; then
    echo "reusing the CA in $out/ca.crt"
else
    rm -f ca.key ca.crt
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key
    # The name constraints limit what this CA can vouch for to HOST, its subdomains and
    # loopback addresses, so trusting it in a browser cannot be abused for other sites
    # even if ca.key leaks.
    openssl req -x509 -new -key ca.key -sha256 -days 3650 \
        -subj "/O=Portvakt development/CN=Portvakt development CA ($host)" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" \
        -addext "nameConstraints=critical,permitted;DNS:$host,permitted;IP:127.0.0.0/255.0.0.0,permitted;IP:0:0:0:0:0:0:0:1/FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF" \
        -out ca.crt
fi

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out server.key.new
openssl req -new -key server.key.new -subj "/CN=$host" -out server.csr
# 365 days: within what browsers accept for a server certificate.
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -sha256 -days 365 \
    -set_serial "0x$(openssl rand -hex 16)" \
    -extfile <(printf '%s\n' \
        "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth" \
        "subjectKeyIdentifier=hash" \
        "authorityKeyIdentifier=keyid" \
        "subjectAltName=DNS:$host,DNS:*.$host,IP:127.0.0.1,IP:::1") \
    -out server.crt.new 2>/dev/null
mv server.key.new server.key
mv server.crt.new server.crt
rm -f server.csr
chmod 644 ca.crt server.crt

openssl verify -CAfile ca.crt server.crt >/dev/null
cat <<MSG
made in $out (development and test only, never production):
  ca.crt       the CA to trust (curl --cacert $out/ca.crt; see certs/README.md)
  server.crt   for $host and *.$host   -> [server] tls_cert
  server.key                           -> [server] tls_key
MSG
