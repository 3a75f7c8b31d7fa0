#!/usr/bin/env bash
# A private CA and the certificates it signs for Redis over TLS with client certificates:
#   deploy/redis/make-certs.sh deploy/redis/certs [redis-host-name-or-ip ...]
# writes ca.crt/ca.key, redis.crt/redis.key (valid for the names given, default: redis,
# localhost, 127.0.0.1) and client.crt/client.key (what jobrunner's processes present).
# For production use your own CA; tests/e2e/test_redis_tls_acl.py runs this very script.
set -euo pipefail
out=${1:?usage: make-certs.sh FOLDER [NAME ...]}
shift
names=("${@:-redis}")
[ $# -eq 0 ] && names=(redis localhost 127.0.0.1)
mkdir -p "$out"
cd "$out"
san=""
for name in "${names[@]}"; do
  if [[ $name =~ ^[0-9.]+$ ]]; then san+="IP:$name,"; else san+="DNS:$name,"; fi
done
days=${CERT_DAYS:-365}
openssl req -x509 -new -nodes -newkey rsa:2048 -days "$days" -keyout ca.key -out ca.crt \
  -subj "/CN=jobrunner Redis CA" 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "${san%,}" > redis.ext
printf 'extendedKeyUsage=clientAuth\n' > client.ext
for who in redis client; do
  openssl req -new -nodes -newkey rsa:2048 -keyout "$who.key" -out "$who.csr" \
    -subj "/CN=jobrunner $who" 2>/dev/null
  openssl x509 -req -in "$who.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
    -out "$who.crt" -extfile "$who.ext" 2>/dev/null
  rm "$who.csr" "$who.ext"
done
# Readable by the containers' users (Redis runs as `redis`, jobrunner as its own user).
chmod 644 ./*.key ./*.crt
echo "wrote $(pwd): ca.crt redis.crt redis.key client.crt client.key (valid for ${names[*]})"
