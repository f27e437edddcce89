#!/usr/bin/env bash
# Make a private CA and one certificate per dask role (scheduler, worker, client) for mutual
# TLS between the pausdenoise client, the dask scheduler and its workers.
#
#   deploy/make-certs.sh OUTDIR [DAYS]        (default OUTDIR=certs, DAYS=365)
#
# OUTDIR gets: ca.pem (public, give to everyone), ca.key (keep it OFF the cluster; only
# needed to sign more certificates), {scheduler,worker,client}.pem + .key.
# Keys are ECDSA P-256 (KEY_ALG=rsa:3072 for RSA). Dask disables hostname checking (peers
# are authenticated by the CA), so the certificates carry no host names and can be reused
# on any node. Requires openssl >= 1.1.1. Refuses to overwrite an existing ca.key.
set -euo pipefail

out="${1:-certs}"
days="${2:-365}"
key_alg="${KEY_ALG:-ec}"

if [[ -e "$out/ca.key" ]]; then
    echo "make-certs: $out/ca.key exists; not overwriting (remove $out to start over)" >&2
    exit 1
fi
mkdir -p "$out"
chmod 700 "$out"
umask 077

newkey=(-newkey "$key_alg")
if [[ "$key_alg" == ec ]]; then
    newkey+=(-pkeyopt ec_paramgen_curve:prime256v1)
fi

# The CA: self-signed, may sign certificates, nothing else.
openssl req -x509 "${newkey[@]}" -nodes -sha256 -days "$days" \
    -subj "/O=pausdenoise/CN=pausdenoise dask CA" \
    -keyout "$out/ca.key" -out "$out/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

ext="$(mktemp)"
trap 'rm -f "$ext" "$out"/*.csr' EXIT
cat >"$ext" <<'EOF'
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
EOF

for role in scheduler worker client; do
    openssl req "${newkey[@]}" -nodes -sha256 \
        -subj "/O=pausdenoise/CN=pausdenoise dask $role" \
        -keyout "$out/$role.key" -out "$out/$role.csr" 2>/dev/null
    openssl x509 -req -sha256 -days "$days" -in "$out/$role.csr" \
        -CA "$out/ca.pem" -CAkey "$out/ca.key" -CAcreateserial \
        -extfile "$ext" -out "$out/$role.pem" 2>/dev/null
    openssl verify -CAfile "$out/ca.pem" "$out/$role.pem" >/dev/null
done
rm -f "$out/ca.srl"
chmod 644 "$out/ca.pem" "$out"/{scheduler,worker,client}.pem

echo "make-certs: wrote $out/{ca,scheduler,worker,client}.pem and keys (valid $days days)"
