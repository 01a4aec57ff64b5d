#!/usr/bin/env python3
"""Mints bearer tokens for benches/auth-load.sh (PyJWT + cryptography).

  mint-tokens.py keys DIR             Ed25519 key for the gateway (gatehouse.pem) and an ES256
                                      "external IdP" key with its JWKS (idp.pem, jwks.json)
  mint-tokens.py own DIR TOKEN N OUT  N fresh Gatehouse access tokens: the claims of TOKEN (a
                                      real login's: sub, sid, ...) with new jti/iat/exp, signed
                                      with DIR/gatehouse.pem and TOKEN's kid
  mint-tokens.py ext DIR N OUT        N tokens of the external IdP (iss https://idp.bench.test)

N tokens are minted in two processes (the machine has two cores).
"""
import json, sys, time, uuid
from concurrent.futures import ProcessPoolExecutor

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm

EXT_ISS, EXT_AUD = "https://idp.bench.test", "bench-api"


def keys(d):
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    open(f"{d}/gatehouse.pem", "wb").write(pem)
    idp = ec.generate_private_key(ec.SECP256R1())
    open(f"{d}/idp.pem", "wb").write(idp.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    jwk = json.loads(ECAlgorithm.to_jwk(idp.public_key()))
    jwk.update(kid="bench-idp", use="sig", alg="ES256")
    json.dump({"keys": [jwk]}, open(f"{d}/jwks.json", "w"))


def mint(args):
    kind, d, template, n, seed = args
    now = int(time.time())
    if kind == "own":
        key = serialization.load_pem_private_key(open(f"{d}/gatehouse.pem", "rb").read(), None)
        header = jwt.get_unverified_header(template)
        claims = jwt.decode(template, options={"verify_signature": False})
        alg, headers = "EdDSA", {"kid": header["kid"], "typ": header["typ"]}
    else:
        key = serialization.load_pem_private_key(open(f"{d}/idp.pem", "rb").read(), None)
        claims = {"iss": EXT_ISS, "aud": EXT_AUD, "sub": "idp|bench", "roles": ["user"]}
        alg, headers = "ES256", {"kid": "bench-idp"}
    out = []
    for i in range(n):
        c = dict(claims, jti=f"{seed}-{i}-{uuid.uuid4().hex[:8]}", iat=now, exp=now + 3600)
        out.append(jwt.encode(c, key, algorithm=alg, headers=headers))
    return out


def main():
    cmd, d = sys.argv[1], sys.argv[2]
    if cmd == "keys":
        return keys(d)
    if cmd == "own":
        template, n, out = sys.argv[3], int(sys.argv[4]), sys.argv[5]
    else:
        template, n, out = None, int(sys.argv[3]), sys.argv[4]
    half = n // 2
    with ProcessPoolExecutor(2) as pool:
        parts = pool.map(mint, [(cmd, d, template, half, "a"), (cmd, d, template, n - half, "b")])
        with open(out, "w") as f:
            for part in parts:
                for token in part:
                    f.write(token + "\n")


if __name__ == "__main__":
    main()
