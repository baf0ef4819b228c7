#!/bin/sh
# Issues the demo's mesh CA and one workload certificate per sidecar into /certs
# (the `certs` volume), laid out like a cert-manager Secret:
#
#   /certs/ca.crt                   the mesh CA certificate (every sidecar's client_ca / ca)
#   /certs/ca/ca.key                the CA key (root only; the sidecars cannot read it)
#   /certs/<workload>/tls.crt       the workload certificate (SPIFFE ID + DNS name)
#   /certs/<workload>/tls.key       its key (owned by 65532, the octopus user)
#
# Existing material is kept, so `docker compose up` twice reuses it. Set ROTATE=1 to
# issue new workload certificates from the same CA; the running sidecars pick them up
# within a second (octopus polls the files), no restart or reload:
#
#   docker compose run --rm -e ROTATE=1 certs
set -eu

OUT=${OUT:-/certs}
TRUST_DOMAIN=${TRUST_DOMAIN:-cluster.local}
NAMESPACE=${NAMESPACE:-shop}
DAYS=${DAYS:-30}
OWNER=${OWNER:-65532:65532}
ROTATE=${ROTATE:-0}

# workload  service-account  (the DNS SAN is the compose service name)
WORKLOADS="app:frontend blue:payments green:payments canary:payments"

umask 077
mkdir -p "$OUT/ca"
cd "$OUT"

if [ ! -s ca/ca.key ] || [ ! -s ca.crt ]; then
  echo "certs: creating the mesh CA"
  printf '%s\n' \
    'basicConstraints = critical, CA:TRUE' \
    'keyUsage = critical, keyCertSign, cRLSign' > ca/ca.ext
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca/ca.key
  openssl req -new -key ca/ca.key -subj "/CN=octopus demo mesh ca" -out ca/ca.csr
  openssl x509 -req -in ca/ca.csr -signkey ca/ca.key -sha256 -days 3650 \
    -extfile ca/ca.ext -out ca.crt
  rm -f ca/ca.csr
  ROTATE=1
fi

for entry in $WORKLOADS; do
  name=${entry%%:*}
  sa=${entry#*:}
  if [ "$ROTATE" != 1 ] && [ -s "$name/tls.crt" ] && [ -s "$name/tls.key" ]; then
    echo "certs: keeping $name/tls.crt"
    continue
  fi
  spiffe="spiffe://$TRUST_DOMAIN/ns/$NAMESPACE/sa/$sa"
  echo "certs: issuing $name/tls.crt for $spiffe"
  mkdir -p "$name"
  # Same file system as the destination, so the renames below are atomic.
  tmp=$(mktemp -d "$OUT/.new-$name.XXXXXX")
  printf '%s\n' \
    'basicConstraints = critical, CA:FALSE' \
    'keyUsage = critical, digitalSignature' \
    'extendedKeyUsage = serverAuth, clientAuth' \
    "subjectAltName = URI:$spiffe, DNS:$name" > "$tmp/ext"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/tls.key"
  openssl req -new -key "$tmp/tls.key" -subj "/CN=$name" -out "$tmp/tls.csr"
  openssl x509 -req -in "$tmp/tls.csr" -CA ca.crt -CAkey ca/ca.key -CAcreateserial \
    -CAserial ca/ca.srl -sha256 -days "$DAYS" -extfile "$tmp/ext" -out "$tmp/tls.crt"
  openssl verify -CAfile ca.crt "$tmp/tls.crt" >/dev/null
  cp ca.crt "$tmp/ca.crt"
  # Write new files, then rename them into place, key first: octopus then never
  # reads a certificate together with a key that does not match it for long.
  chown "$OWNER" "$tmp/tls.key" "$tmp/tls.crt" "$tmp/ca.crt"
  chmod 0400 "$tmp/tls.key"
  chmod 0444 "$tmp/tls.crt" "$tmp/ca.crt"
  mv -f "$tmp/ca.crt" "$name/ca.crt"
  mv -f "$tmp/tls.key" "$name/tls.key"
  mv -f "$tmp/tls.crt" "$name/tls.crt"
  rm -rf "$tmp"
done

chmod 0755 "$OUT" "$OUT"/app "$OUT"/blue "$OUT"/green "$OUT"/canary
chmod 0444 ca.crt
chmod 0700 ca
echo "certs: done"
