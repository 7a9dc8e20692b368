#!/bin/sh
# Regenerates the strongSwan-made test PKI that crates/ike/src/cert/strongswan.rs
# checks: strongSwan's `pki` (strongswan-pki 5.9.8) for the keys, certificates
# and CRLs, OpenSSL for the AUTH signature vectors. Certificates are valid for
# 10 years from the day this ran (2026-11-23); the tests check them at
# 2027-01-01.
set -eu
cd "$(dirname "$0")"

for t in ecdsa rsa; do
    if [ "$t" = ecdsa ]; then size=256; pad=""; else size=2048; pad="--rsa-padding pss"; fi
    pki --gen --type $t --size $size --outform pem > ca-$t.key
    pki --self --ca --lifetime 3650 --in ca-$t.key --type $t \
        --dn "C=CH, O=tunsec test, CN=tunsec $t CA" --outform pem > ca-$t.pem
    for n in node revoked; do
        pki --gen --type $t --size $size --outform pem > $n-$t.key
        # shellcheck disable=SC2086
        pki --pub --in $n-$t.key --type $t |
            pki --issue --cacert ca-$t.pem --cakey ca-$t.key --lifetime 3650 $pad \
                --dn "C=CH, O=tunsec test, CN=$n-$t.example" \
                --san $n-$t.example --san 192.0.2.1 --san $n@tunsec.test \
                --flag serverAuth --flag clientAuth --outform pem > $n-$t.pem
    done
    pki --signcrl --cacert ca-$t.pem --cakey ca-$t.key --lifetime 3650 \
        --reason key-compromise --cert revoked-$t.pem --outform pem > ca-$t.crl
done

# AUTH signature vectors over one message, made by OpenSSL with the node keys.
printf 'tunsec signed octets\n' > message.txt
openssl dgst -sha256 -sign node-ecdsa.key -out node-ecdsa.sha256.sig message.txt
openssl dgst -sha256 -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32 \
    -sigopt rsa_mgf1_md:sha256 -sign node-rsa.key -out node-rsa.pss-sha256.sig message.txt
openssl dgst -sha256 -sign node-rsa.key -out node-rsa.pkcs1-sha256.sig message.txt
openssl dgst -sha1 -sign node-rsa.key -out node-rsa.pkcs1-sha1.sig message.txt
