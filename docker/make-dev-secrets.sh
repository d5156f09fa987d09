#!/bin/sh
# Secrets for trying the compose file out: a self-signed TLS pair, a token file with one token
# per role, and the secret that closes Triton's admin protocols. Not for production: use your
# own CA and distribute tokens through your secret store.
#
#   sh docker/make-dev-secrets.sh [DIR]      (default ./secrets; prints the tokens once)
set -eu
dir=${1:-secrets}
mkdir -p "$dir"
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -keyout "$dir/tls.key" -out "$dir/tls.crt" -subj "/CN=neardup" \
  -addext "subjectAltName=DNS:localhost,DNS:neardup,IP:127.0.0.1" 2>/dev/null
entries=""
for role in check enroll admin; do
  token=$(openssl rand -base64 32 | tr '+/' '-_' | tr -d '=\n')
  digest=$(printf %s "$token" | openssl dgst -sha256 -r | cut -d' ' -f1)
  entries="$entries${entries:+, }{\"name\": \"dev-$role\", \"sha256\": \"$digest\", \"roles\": [\"$role\"]}"
  echo "dev-$role token: $token"
done
printf '{"tokens": [%s]}\n' "$entries" > "$dir/tokens.json"
printf 'NEARDUP_TRITON_ADMIN_SECRET=%s\n' "$(openssl rand -hex 24)" > .env
echo "wrote $dir/tls.crt, $dir/tls.key, $dir/tokens.json and .env (Triton's admin secret)"
